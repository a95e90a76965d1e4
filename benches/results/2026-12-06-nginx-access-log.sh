#!/bin/bash
# nginx as a reverse proxy with and without a buffered JSON access log, interleaved rounds;
# prints req/s and the proxy processes' CPU per call (utime+stime from /proc). See
# 2026-12-06-44c47ab-ruled-out.md. Needs nginx and wrk; uses ports 19081-19082 and /tmp/ngx.
set -e
D=/tmp/ngx
BODY='{"id":42,"name":"widget","owner":"team-a","price":1299,"tags":["a","b","c"],"note":"nothing sensitive here, just a small JSON answer of about two hundred bytes"}'
mk() { # name workers server
  mkdir -p $D/$1; cat > $D/$1/nginx.conf <<C
daemon off; worker_processes $2; pid $D/$1/nginx.pid; error_log $D/$1/error.log;
events { worker_connections 4096; }
http { client_body_temp_path $D/$1; proxy_temp_path $D/$1;
log_format j escape=json '{"time":"\$time_iso8601","remote":"\$remote_addr","method":"\$request_method","uri":"\$request_uri","status":\$status,"bytes":\$body_bytes_sent,"rt":\$request_time,"ua":"\$http_user_agent","upstream":"\$upstream_addr","urt":"\$upstream_response_time"}';
$3 }
C
}
mk up 1 "access_log off; server { listen 127.0.0.1:19081; keepalive_requests 1000000; location = /v1/items/42 { default_type application/json; return 200 '$BODY'; } }"
PX="upstream up { server 127.0.0.1:19081; keepalive 64; } server { listen 127.0.0.1:19082; keepalive_requests 1000000; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; } }"
mk off 2 "access_log off; $PX"
mk on 2 "access_log $D/on/access.log j buffer=64k flush=10ms; $PX"
nginx -c $D/up/nginx.conf -p $D/up & UP=$!
sleep 0.5
cpu() { local t=0; for p in $(pgrep -P $1); do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
for r in 1 2 3 4 5 6; do
  for side in off on; do
    [ $((r % 2)) -eq 0 ] && side=$([ $side = off ] && echo on || echo off)
    rm -f $D/on/access.log.old
    nginx -c $D/$side/nginx.conf -p $D/$side & P=$!
    sleep 0.5
    wrk -t2 -c32 -d2s http://127.0.0.1:19082/v1/items/42 > /dev/null
    a=$(cpu $P)
    out=$(wrk -t2 -c32 -d6s http://127.0.0.1:19082/v1/items/42)
    b=$(cpu $P)
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    echo "round $r $side rps=$rps cpu_us_per_call=$(echo "($b-$a)*10000/$n" | bc -l | cut -c1-5)"
    kill $P; wait $P 2>/dev/null || true; [ $side = on ] && { echo "log lines: $(wc -l < $D/on/access.log)"; rm -f $D/on/access.log; }
    sleep 0.3
  done
done
kill $UP
