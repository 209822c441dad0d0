#!/bin/sh
# The exporter of both labs, capturing live on the workstation's eth0 and
# exporting IPFIX to the collector on the inside segment:
#
#   sh lab/exporter.sh [softflowd|pmacctd] [more options for it]
#
# softflowd is the default; docker-compose picks with LAB_EXPORTER, `make lab`
# with --exporter (and adds softflowd's control socket and pid file).
set -eu
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
exporter="${1:-${LAB_EXPORTER:-softflowd}}"
[ "$#" -gt 0 ] && shift

case "$exporter" in
softflowd)
    # -d stays in the foreground and logs to stderr.  The timeouts expire a
    # flow a few seconds after its last packet (as nfprobe_timeouts in
    # pmacctd.conf do); SIGTERM expires and exports the rest.  softflowd 1.1.0
    # processes captured packets only once a 256 KiB capture block is full,
    # which the workstation's background burst sees to (lab/traffic.py).
    # Its own export packets cross eth0 too: the filter leaves them out.
    exec softflowd -d -i eth0 -v 10 -n 10.77.0.2:4739 \
        -t udp=3 -t tcp=3 -t tcp.fin=1 -t maxlife=10 -t expint=1 \
        "$@" 'not (udp and port 4739)'
    ;;
pmacctd)
    exec pmacctd -f "$(dirname "$0")/pmacctd.conf" "$@"
    ;;
*)
    echo "exporter.sh: unknown exporter $exporter (softflowd or pmacctd)" >&2
    exit 2
    ;;
esac
