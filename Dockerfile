# flowtrap collector image: slim Python, non-root, UDP 2055 (NetFlow) and 4739
# (IPFIX), Prometheus metrics and health on TCP 9464.
FROM python:3.11-slim

RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/flowtrap \
        --create-home --shell /usr/sbin/nologin flowtrap

WORKDIR /opt/flowtrap
COPY pyproject.toml README.md ./
COPY collector ./collector
COPY detectors ./detectors
COPY schemas ./schemas
RUN pip install --no-cache-dir . && mkdir -p /var/log/flowtrap /etc/flowtrap \
    && chown flowtrap:flowtrap /var/log/flowtrap \
    && chmod 0750 /var/log/flowtrap

ENV PYTHONUNBUFFERED=1
USER flowtrap
VOLUME ["/var/log/flowtrap", "/var/lib/flowtrap"]
EXPOSE 2055/udp 4739/udp 9464/tcp
# Metrics bind every address inside the container so that they can be published;
# the health check asks the loopback.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s CMD ["python", "-c", \
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4)"]
ENTRYPOINT ["flowtrap"]
CMD ["run", "--events", "/var/log/flowtrap/events.jsonl", "--metrics", "0.0.0.0:9464"]
