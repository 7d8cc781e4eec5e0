#!/usr/bin/env bash
# The whole job on one machine: build, start payment-sim and the daemon
# against the local RabbitMQ and PostgreSQL, publish orders (some invalid,
# some declined), and show where every one of them ended.
#
#   bash deploy/demo.sh [COUNT]      (default 1000 orders)
#
# Uses AMQP_URL / DATABASE_URL if set, else the local services with their
# default credentials. Leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."

count="${1:-1000}"
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/orders_demo}"
export PAYMENT_BASE_URL="http://127.0.0.1:18081"
export ORDER_PROCESSOR__AMQP__EXCHANGE="demo.orders"
export ORDER_PROCESSOR__AMQP__QUEUE="demo.orders.process"
export ORDER_PROCESSOR__HTTP__LISTEN="127.0.0.1:19090"
export ORDER_PROCESSOR__RETRY__BASE_DELAY_MS=200
export ORDER_PROCESSOR__RETRY__MAX_DELAY_MS=2000
export OTEL_SDK_DISABLED="${OTEL_SDK_DISABLED:-true}"
export RUST_LOG="${RUST_LOG:-warn}"

if command -v rabbitmqctl >/dev/null && ! rabbitmqctl -q status >/dev/null 2>&1; then
  rabbitmq-server -detached && rabbitmqctl -q await_startup
fi
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
fi

echo "== building (release)"
cargo build --release --locked --bins -q
bin=target/release

pids=()
cleanup() { for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "== starting payment-sim (1 ms latency, 1% transient failures, 2% declines)"
"$bin/payment-sim" --listen 127.0.0.1:18081 --latency-ms 1 --fail-rate 0.01 --decline-rate 0.02 >/dev/null &
pids+=($!)

echo "== migrating $(echo "$DATABASE_URL" | sed -E 's#//[^@]*@#//#')"
"$bin/order-processor" migrate
psql "$DATABASE_URL" -qc "TRUNCATE orders" >/dev/null

echo "== starting the daemon"
"$bin/order-processor" run > /tmp/order-processor-demo.log 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fs http://127.0.0.1:19090/readyz >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fs http://127.0.0.1:19090/readyz >/dev/null || { echo "the daemon did not become ready; see /tmp/order-processor-demo.log"; exit 1; }

echo "== publishing $count orders (5% invalid on purpose)"
"$bin/order-processor" publish --count "$count" --invalid-ratio 0.05 > /tmp/order-processor-demo.published
head -3 /tmp/order-processor-demo.published
echo "   … (order and trace ids of all of them in /tmp/order-processor-demo.published)"

echo "== waiting for every order to be settled"
settled() {
  curl -fs http://127.0.0.1:19090/metrics | awk '
    /^order_processor_deliveries_total/ && /outcome="(acked|dead_lettered)"/ { n += $NF }
    END { print n + 0 }'
}
for _ in $(seq 1 300); do
  [ "$(settled)" -ge "$count" ] && break
  sleep 0.2
done

echo
echo "== result"
echo "orders saved in PostgreSQL:  $(psql "$DATABASE_URL" -tAc 'SELECT count(*) FROM orders')"
echo "deliveries by outcome and kind (dead letters are in demo.orders.process.dead):"
curl -fs http://127.0.0.1:19090/metrics | grep '^order_processor_deliveries_total' | sed 's/^/   /'
echo "a few saved orders:"
psql "$DATABASE_URL" -c "SELECT order_id, currency, total_minor, charge_id, trace_id FROM orders ORDER BY processed_at DESC LIMIT 3"
