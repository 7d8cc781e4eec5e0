-- One row per processed order; the primary key is what makes saving idempotent.
CREATE TABLE IF NOT EXISTS orders (
    order_id     uuid        PRIMARY KEY,
    customer_id  text        NOT NULL,
    currency     text        NOT NULL,
    total_minor  bigint      NOT NULL CHECK (total_minor > 0),
    charge_id    text        NOT NULL,
    trace_id     text,
    processed_at timestamptz NOT NULL DEFAULT now()
);
