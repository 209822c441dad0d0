# flowtrap collector image: slim Python, non-root, UDP 2055 (NetFlow) and 4739 (IPFIX).
FROM python:3.11-slim

RUN useradd --system --uid 10001 --home-dir /var/lib/flowtrap --create-home flowtrap

WORKDIR /opt/flowtrap
COPY pyproject.toml README.md ./
COPY collector ./collector
COPY detectors ./detectors
COPY schemas ./schemas
RUN pip install --no-cache-dir . && mkdir -p /var/log/flowtrap \
    && chown flowtrap:flowtrap /var/log/flowtrap

USER flowtrap
EXPOSE 2055/udp 4739/udp
ENTRYPOINT ["flowtrap"]
CMD ["run", "--events", "/var/log/flowtrap/events.jsonl"]
