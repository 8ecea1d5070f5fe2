#!/usr/bin/env python3
"""Which schema shape lets SQLite take new webhooks fastest on a 1M-item file (issue 14, item 5)?

An experiment, not the product: the statements orderwatch's writer runs for a new webhook (a new
order, a new item, one ~400-byte event; read the batch's rows, upsert the order, set when it is
polled, insert the item and the event), batches of --batch, synchronous=FULL, WAL, with a
checkpointer thread shaped like orderwatch's (PASSIVE every 250 ms after a commit, TRUNCATE with
the writer held between batches once the WAL passes 16 MiB), on fresh copies of the same
prefilled file, one shape after the other in the same run:

  uuid     today's schema: orders and order_items looked up by UUID, `order_items_order`
           (order_uuid) and `item_events_item` (item_uuid, id): four UUID-keyed B-trees take a
           random insert per new webhook.
  arrival  the same tables with two added integer columns, `order_items.order_seq`
           (= orders.rowid) and `item_events.item_seq` (= order_items.rowid), indexed instead
           of the two UUID-keyed secondary indexes: rows arrive in rowid order, so those two
           trees grow at their end and only the two primary-key indexes take random inserts.
  triggers the arrival shape, but the inserts name no integer column: AFTER INSERT triggers
           fill them (what rows inserted by hand in sqlite3 would need), to price that.

Prints webhooks/s, commit p50/p99 and the WAL's high-water mark for each, and each shape's rate
over uuid's.

usage: benchmarks/schema-experiment.py PREFILLED.db [--seconds 60] [--batch 40] [--workdir DIR]
                                      [--shapes uuid,arrival,triggers]
"""

import argparse
import json
import os
import shutil
import sqlite3
import threading
import time
import uuid

CHECKPOINT_TICK = 0.25
FORCE_AT = 16 * 1024 * 1024
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024
PAYLOAD_PAD = "x" * 300


def copy_synced(source, target):
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(target + suffix):
            os.remove(target + suffix)
    shutil.copyfile(source, target)
    with open(target, "rb+") as f:
        os.fsync(f.fileno())


def checkpoint_first(path):
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


TRIGGERS = [
    "CREATE TRIGGER order_items_order_seq AFTER INSERT ON order_items WHEN NEW.order_seq IS NULL"
    " BEGIN UPDATE order_items SET order_seq ="
    " (SELECT rowid FROM orders WHERE order_uuid = NEW.order_uuid) WHERE rowid = NEW.rowid; END",
    "CREATE TRIGGER item_events_item_seq AFTER INSERT ON item_events WHEN NEW.item_seq IS NULL"
    " BEGIN UPDATE item_events SET item_seq ="
    " (SELECT rowid FROM order_items WHERE item_uuid = NEW.item_uuid) WHERE id = NEW.id; END",
]


def make_arrival(path, triggers):
    """Adds the arrival-ordered columns and swaps the two secondary indexes (on a copy)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    started = time.monotonic()
    conn.execute("BEGIN")
    conn.execute("ALTER TABLE order_items ADD COLUMN order_seq INTEGER")
    conn.execute("ALTER TABLE item_events ADD COLUMN item_seq INTEGER")
    conn.execute(
        "UPDATE order_items SET order_seq = "
        "(SELECT rowid FROM orders o WHERE o.order_uuid = order_items.order_uuid)"
    )
    conn.execute(
        "UPDATE item_events SET item_seq = "
        "(SELECT rowid FROM order_items i WHERE i.item_uuid = item_events.item_uuid)"
    )
    conn.execute("DROP INDEX order_items_order")
    conn.execute("DROP INDEX item_events_item")
    conn.execute("CREATE INDEX order_items_order_seq ON order_items (order_seq)")
    conn.execute("CREATE INDEX item_events_item_seq ON item_events (item_seq, id)")
    if triggers:
        for trigger in TRIGGERS:
            conn.execute(trigger)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.monotonic() - started


class Checkpointer(threading.Thread):
    def __init__(self, path, gate, stop):
        super().__init__(daemon=True)
        self.path, self.gate, self.stop = path, gate, stop
        self.wal = path + "-wal"
        self.peak = 0
        self.commits = 0

    def wal_size(self):
        try:
            return os.path.getsize(self.wal)
        except FileNotFoundError:
            return 0

    def run(self):
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        seen = 0
        while not self.stop.wait(CHECKPOINT_TICK):
            size = self.wal_size()
            self.peak = max(self.peak, size)
            if size > FORCE_AT:
                with self.gate:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            elif self.commits != seen:
                seen = self.commits
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        conn.close()


def webhook_rows(count):
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    rows = []
    for _ in range(count):
        order, item = str(uuid.uuid4()), str(uuid.uuid4())
        payload = json.dumps({"order_uuid": order, "order_item_uuid": item, "pad": PAYLOAD_PAD})
        rows.append((order, item, now, payload))
    return rows


def run(path, shape, seconds, batch):
    gate, stop = threading.Lock(), threading.Event()
    checkpointer = Checkpointer(path, gate, stop)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
    conn.execute("PRAGMA temp_store=MEMORY")
    checkpointer.start()
    commits, done = [], 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        rows = webhook_rows(batch)
        orders = json.dumps([r[0] for r in rows])
        items = json.dumps([r[1] for r in rows])
        with gate:
            t0 = time.monotonic()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "SELECT * FROM orders WHERE order_uuid IN (SELECT value FROM json_each(?))",
                (orders,),
            ).fetchall()
            if shape == "uuid":
                conn.execute(
                    "SELECT * FROM order_items WHERE item_uuid IN (SELECT value FROM json_each(?1))"
                    " OR order_uuid IN (SELECT value FROM json_each(?2))",
                    (items, orders),
                ).fetchall()
            else:
                conn.execute(
                    "SELECT * FROM order_items WHERE item_uuid IN (SELECT value FROM json_each(?1))"
                    " OR order_seq IN (SELECT rowid FROM orders"
                    "                  WHERE order_uuid IN (SELECT value FROM json_each(?2)))",
                    (items, orders),
                ).fetchall()
            for order, item, now, payload in rows:
                cur = conn.execute(
                    "INSERT INTO orders (order_uuid, order_id, order_version, order_created,"
                    " order_updated, first_seen_at) VALUES (?1, '1', 1, ?2, ?2, ?2)"
                    " ON CONFLICT (order_uuid) DO UPDATE SET order_version = excluded.order_version",
                    (order, now),
                )
                order_seq = cur.lastrowid
                conn.execute(
                    "UPDATE orders SET needs_poll = 1, next_poll_at = ?2 WHERE order_uuid = ?1",
                    (order, now),
                )
                explicit = shape == "arrival"
                extra_col, extra_val = (", order_seq", (order_seq,)) if explicit else ("", ())
                cur = conn.execute(
                    "INSERT INTO order_items (item_uuid, order_uuid, status, item_version,"
                    " status_version, item_created, item_updated, as_of, as_of_source, source,"
                    " first_seen_at, changed_at, updated_at" + extra_col + ")"
                    " VALUES (?, ?, 'PENDING', 1, 1, ?, ?, ?, 'webhook', 'webhook', ?, ?, ?"
                    + (", ?" if extra_val else "") + ")",
                    (item, order, now, now, now, now, now, now) + extra_val,
                )
                item_seq = cur.lastrowid
                extra_col, extra_val = (", item_seq", (item_seq,)) if explicit else ("", ())
                conn.execute(
                    "INSERT INTO item_events (item_uuid, order_uuid, source, status, item_version,"
                    " as_of, received_at, outcome, payload" + extra_col + ")"
                    " VALUES (?, ?, 'webhook', 'PENDING', 1, ?, ?, 'applied', ?"
                    + (", ?" if extra_val else "") + ")",
                    (item, order, now, now, payload) + extra_val,
                )
            conn.execute("COMMIT")
            commits.append(time.monotonic() - t0)
        checkpointer.commits += 1
        done += batch
    elapsed = time.monotonic() - started
    stop.set()
    checkpointer.join()
    conn.close()
    commits.sort()
    pick = lambda q: commits[min(len(commits) - 1, int(q * len(commits)))] * 1000
    return {
        "shape": shape,
        "rate": done / elapsed,
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "wal_peak_mib": checkpointer.peak / 2**20,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("prefilled")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--batch", type=int, default=40)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--shapes", default="uuid,arrival,triggers", help="the first is the baseline")
    args = parser.parse_args()
    workdir = args.workdir or os.path.dirname(os.path.abspath(args.prefilled))
    checkpoint_first(args.prefilled)
    results = []
    for shape in args.shapes.split(","):
        path = os.path.join(workdir, f"schema-experiment-{shape}.db")
        copy_synced(args.prefilled, path)
        if shape != "uuid":
            built = make_arrival(path, triggers=shape == "triggers")
            print(f"{shape}: columns and indexes built in {built:.0f} s", flush=True)
        os.system("sync")
        result = run(path, shape, args.seconds, args.batch)
        print(
            f"{shape:8} {result['rate']:8.0f} webhooks/s  commit p50 {result['p50_ms']:.1f} ms"
            f"  p99 {result['p99_ms']:.1f} ms  WAL peak {result['wal_peak_mib']:.0f} MiB",
            flush=True,
        )
        results.append(result)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
    for result in results[1:]:
        print(f"{result['shape']}/{results[0]['shape']}: {result['rate'] / results[0]['rate']:.2f}")


if __name__ == "__main__":
    main()
