#!/usr/bin/env python3
"""A proxy that lets a CQL native protocol v4 client talk to a protocol v3 server.

This is a test aid, not a production path. It exists so that the Scylla suites, whose Rust
driver (the `scylla` crate) speaks only protocol v4, can run against Apache Cassandra 2.1,
which speaks only v3 and is the one real CQL server obtainable here (see README.md beside
this file). It knows the subset of the protocol that the driver and our store use, and
nothing more.

What it translates, frame by frame (everything else passes through unchanged):
  * Frame header version: requests 0x04 -> 0x03, responses 0x83 -> 0x84.
  * STARTUP: CQL_VERSION becomes 3.2.0, the version Cassandra 2.1 accepts.
  * Bound values of QUERY, EXECUTE and BATCH: the v4 `unset` marker (length -2) becomes
    null (length -1). This is not equivalent. Writing null creates a tombstone, while unset
    leaves the column as it was.
  * RESULT Prepared: adds the v4 partition-key index list, always empty. The driver
    therefore cannot compute a statement's token, so it does no token-aware routing.

What it fakes (answered by the proxy, never sent to the server):
  * `SELECT ... FROM system_schema.<table>`. These are the schema tables of Cassandra 3.0
    and later, and the driver reads them for its metadata. The proxy answers with an empty
    result that has the columns asked for, as if no keyspace had a table, type or view. Any
    WHERE clause and bound values are ignored. `system_schema.scylla_*` tables, and columns
    the proxy has no type for, get an Invalid error instead, which is what the driver gets
    from a Cassandra (non-Scylla) node. Anything else that names system_schema gets an
    Invalid error too.
  * `SELECT ... rpc_address ... FROM system.local`. Cassandra 2.1 has no rpc_address
    column there. The proxy answers with one row built from a snapshot of the server's
    system.local, taken with the Python `cassandra-driver` over protocol v3 when the proxy
    starts. rpc_address is the proxy's listen address.
  Both work over QUERY and over PREPARE + EXECUTE. A faked PREPARE returns an id of 20
  bytes, which cannot collide with the server's own 16-byte ids, and the proxy remembers
  that id to answer its EXECUTE.

What it does not handle (the driver must not use it):
  compressed frames (the connection is closed with an error in the log), custom payloads
  (v4 flag 0x04), named values in BATCH, the v4-only types date, time, smallint and tinyint
  (the server rejects them), protocol v5, and more than one server.

Usage:
  v4proxy.py [--listen-host 127.0.0.1] [--upstream-host 127.0.0.1] LISTEN_PORT UPSTREAM_PORT

It logs to stderr. With V4PROXY_DEBUG=1 it also logs the text of every QUERY and PREPARE,
cut to 200 bytes.
"""

import argparse
import asyncio
import hashlib
import ipaddress
import logging
import os
import re
import struct
import sys

log = logging.getLogger("v4proxy")

# Frame header: version, flags, stream, opcode, body length (protocol v3 and v4 share it).
HEADER = struct.Struct(">BBhBi")
FLAG_COMPRESSION = 0x01
FLAG_TRACING = 0x02

OP_ERROR, OP_STARTUP, OP_QUERY, OP_RESULT = 0x00, 0x01, 0x07, 0x08
OP_PREPARE, OP_EXECUTE, OP_BATCH = 0x09, 0x0A, 0x0D

RESULT_ROWS, RESULT_PREPARED = 0x0002, 0x0004
ROWS_GLOBAL_TABLE_SPEC = 0x0001
ERROR_INVALID = 0x2200

SERVER_CQL_VERSION = b"3.2.0"


# --- Reading and writing protocol primitives -------------------------------------------------

def read_short_bytes(b, i):
    """[short bytes] or [string]: u16 length, then the bytes. Returns (value, next index)."""
    n = struct.unpack_from(">H", b, i)[0]
    return b[i + 2:i + 2 + n], i + 2 + n


def read_long_string(b, i):
    """[long string]: i32 length, then the bytes. Returns (value, next index)."""
    n = struct.unpack_from(">i", b, i)[0]
    return b[i + 4:i + 4 + n], i + 4 + n


def string(s):
    """[string] from a str."""
    s = s.encode()
    return struct.pack(">H", len(s)) + s


def value(b):
    """[bytes] from bytes."""
    return struct.pack(">i", len(b)) + b


def frame(stream, opcode, body):
    """A v4 response frame, as the client expects it."""
    return HEADER.pack(0x84, 0, stream, opcode, len(body)) + body


def error_frame(stream, message):
    return frame(stream, OP_ERROR, struct.pack(">i", ERROR_INVALID) + string(message))


# --- Requests: v4 -> v3 -----------------------------------------------------------------------

def unset_to_null(b, i, count, named):
    """Copies `count` [value]s starting at b[i] (each after a [string] name when `named`),
    turning v4 `unset` (length -2) into null (length -1). Returns (bytes, next index)."""
    out = bytearray()
    for _ in range(count):
        if named:
            _, j = read_short_bytes(b, i)
            out += b[i:j]
            i = j
        n = struct.unpack_from(">i", b, i)[0]
        if n == -2:
            out += struct.pack(">i", -1)
            i += 4
        elif n < 0:
            out += b[i:i + 4]
            i += 4
        else:
            out += b[i:i + 4 + n]
            i += 4 + n
    return bytes(out), i


def fix_query_parameters(b, i):
    """The <query_parameters> of QUERY and EXECUTE, from b[i] to the end of the body:
    consistency (2), flags (1), then values when flag 0x01 (named when flag 0x40)."""
    out = bytearray(b[i:i + 3])
    flags = b[i + 2]
    i += 3
    if flags & 0x01:
        count = struct.unpack_from(">H", b, i)[0]
        out += b[i:i + 2]
        values, i = unset_to_null(b, i + 2, count, named=bool(flags & 0x40))
        out += values
    out += b[i:]  # page size, paging state, serial consistency, timestamp: same in v3
    return bytes(out)


def fix_request(opcode, body):
    """The v3 body for a v4 request body."""
    if opcode == OP_STARTUP:
        n = struct.unpack_from(">H", body, 0)[0]
        i, out = 2, struct.pack(">H", n)
        for _ in range(n):
            k, i = read_short_bytes(body, i)
            v, i = read_short_bytes(body, i)
            if k == b"CQL_VERSION":
                v = SERVER_CQL_VERSION
            out += struct.pack(">H", len(k)) + k + struct.pack(">H", len(v)) + v
        return out
    if opcode == OP_QUERY:
        _, i = read_long_string(body, 0)
        return body[:i] + fix_query_parameters(body, i)
    if opcode == OP_EXECUTE:
        _, i = read_short_bytes(body, 0)
        return body[:i] + fix_query_parameters(body, i)
    if opcode == OP_BATCH:
        # type (1), n (2), n * (kind, query string or prepared id, values), then flags etc.
        out = bytearray(body[:3])
        n = struct.unpack_from(">H", body, 1)[0]
        i = 3
        for _ in range(n):
            kind = body[i]
            _, j = read_long_string(body, i + 1) if kind == 0 else read_short_bytes(body, i + 1)
            count = struct.unpack_from(">H", body, j)[0]
            out += body[i:j + 2]
            values, i = unset_to_null(body, j + 2, count, named=False)
            out += values
        out += body[i:]
        return bytes(out)
    return body


# --- Responses: v3 -> v4 ----------------------------------------------------------------------

def fix_response(opcode, flags, body):
    """The v4 body for a v3 response body."""
    start = 16 if flags & FLAG_TRACING else 0  # a traced response starts with the trace id
    if opcode == OP_RESULT and struct.unpack_from(">i", body, start)[0] == RESULT_PREPARED:
        _, i = read_short_bytes(body, start + 4)  # the statement id
        # Bind metadata: flags (4), columns_count (4); v4 then has pk_count (4) + indexes.
        return body[:i + 8] + struct.pack(">i", 0) + body[i + 8:]
    return body


# --- Faked answers ----------------------------------------------------------------------------

def option(code, *params):
    """A column type [option]: its id, then any type parameters."""
    return struct.pack(">H", code) + b"".join(params)


TEXT, INT, BOOLEAN = option(0x000D), option(0x0009), option(0x0004)
UUID, INET = option(0x000C), option(0x0010)

# Types of the system_schema columns the driver reads. Asking for any other column gets an
# error rather than a wrongly typed column.
SCHEMA_TYPES = {
    "keyspace_name": TEXT, "table_name": TEXT, "type_name": TEXT, "view_name": TEXT,
    "base_table_name": TEXT, "column_name": TEXT, "kind": TEXT, "type": TEXT,
    "position": INT, "durable_writes": BOOLEAN,
    "replication": option(0x0021, TEXT, TEXT),  # map<text, text>
    "field_names": option(0x0020, TEXT),  # list<text>
    "field_types": option(0x0020, TEXT),  # list<text>
}

SELECT = re.compile(rb"^\s*SELECT\s+(.+?)\s+FROM\s+(\w+)\.(\w+)", re.IGNORECASE | re.DOTALL)


def parse_select(query):
    """(columns, keyspace, table) of `SELECT a, b FROM ks.table ...`, or None."""
    m = SELECT.match(query)
    if not m:
        return None
    columns = [c.strip().decode() for c in m.group(1).split(b",")]
    return columns, m.group(2).decode(), m.group(3).decode()


def rows_metadata(keyspace, table, columns):
    """<metadata> of a Rows result (or of a prepared statement's result), global table spec."""
    meta = struct.pack(">ii", ROWS_GLOBAL_TABLE_SPEC, len(columns))
    meta += string(keyspace) + string(table)
    for name, typ in columns:
        meta += string(name) + typ
    return meta


def rows_body(keyspace, table, columns, rows):
    """A Rows result: `columns` is [(name, type)], each row a list of encoded [bytes]."""
    body = struct.pack(">i", RESULT_ROWS) + rows_metadata(keyspace, table, columns)
    body += struct.pack(">i", len(rows))
    for row in rows:
        body += b"".join(row)
    return body


def prepared_body(statement_id, keyspace, table, columns):
    """A v4 Prepared result with no bind variables and the given result columns."""
    return (struct.pack(">i", RESULT_PREPARED) + struct.pack(">H", len(statement_id))
            + statement_id + struct.pack(">iii", 0, 0, 0)  # flags, no columns, no pk indexes
            + rows_metadata(keyspace, table, columns))


class Fakes:
    """The answers the proxy gives itself. `local` is the snapshot of system.local (a dict
    of column name -> (type, encoded value)); `prepared` maps faked statement ids to the
    answer that their EXECUTE gets."""

    def __init__(self, local):
        self.local = local
        self.prepared = {}

    def answer(self, query):
        """For a query the proxy answers itself: ("rows", keyspace, table, columns, rows) or
        ("error", message). None for a query that goes to the server."""
        select = parse_select(query)
        if b"system_schema." in query:
            if select is None or select[1] != "system_schema":
                return ("error", "v4proxy: only SELECT ... FROM system_schema.<table> is faked")
            columns, _, table = select
            if table.startswith("scylla_") or any(c not in SCHEMA_TYPES for c in columns):
                return ("error", "Keyspace system_schema does not exist")
            return ("rows", "system_schema", table, [(c, SCHEMA_TYPES[c]) for c in columns], [])
        if select and select[1:] == ("system", "local") and "rpc_address" in select[0]:
            missing = [c for c in select[0] if c not in self.local]
            if missing:
                return ("error", f"v4proxy: cannot fake system.local columns {missing}")
            columns = [(c, self.local[c][0]) for c in select[0]]
            return ("rows", "system", "local", columns, [[self.local[c][1] for c in select[0]]])
        return None

    def query_frame(self, stream, answer):
        if answer[0] == "error":
            return error_frame(stream, answer[1])
        return frame(stream, OP_RESULT, rows_body(*answer[1:]))

    def prepare_frame(self, stream, query, answer):
        if answer[0] == "error":
            return error_frame(stream, answer[1])
        statement_id = b"v4proxy:" + hashlib.sha1(query).digest()[:12]
        self.prepared[statement_id] = answer
        _, keyspace, table, columns, _ = answer
        return frame(stream, OP_RESULT, prepared_body(statement_id, keyspace, table, columns))


def snapshot_local(host, port, rpc_address):
    """system.local of the v3 server, in the columns the v4 driver asks for."""
    # The Python driver, installed by setup.sh.
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import RoundRobinPolicy

    profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy())
    cluster = Cluster([host], port=port, protocol_version=3,
                      execution_profiles={EXEC_PROFILE_DEFAULT: profile},
                      schema_metadata_enabled=False, token_metadata_enabled=False)
    try:
        row = cluster.connect().execute(
            "SELECT host_id, data_center, rack, tokens, cluster_name, release_version,"
            " partitioner FROM system.local WHERE key = 'local'").one()
    finally:
        cluster.shutdown()
    tokens = sorted(row.tokens or ())
    encoded_tokens = struct.pack(">i", len(tokens)) + b"".join(value(t.encode()) for t in tokens)
    return {
        "host_id": (UUID, value(row.host_id.bytes)),
        "rpc_address": (INET, value(ipaddress.ip_address(rpc_address).packed)),
        "data_center": (TEXT, value(row.data_center.encode())),
        "rack": (TEXT, value(row.rack.encode())),
        "tokens": (option(0x0022, TEXT), value(encoded_tokens)),  # set<text>
        "cluster_name": (TEXT, value(row.cluster_name.encode())),
        "release_version": (TEXT, value(row.release_version.encode())),
        "partitioner": (TEXT, value(row.partitioner.encode())),
    }


# --- Connections ------------------------------------------------------------------------------

class Unsupported(Exception):
    pass


async def read_frame(reader):
    version, flags, stream, opcode, length = HEADER.unpack(await reader.readexactly(HEADER.size))
    body = await reader.readexactly(length)
    if flags & FLAG_COMPRESSION:
        raise Unsupported("compressed frames are not supported; turn compression off")
    return version, flags, stream, opcode, body


async def client_to_server(client, client_writer, server_writer, fakes, debug):
    while True:
        _, flags, stream, opcode, body = await read_frame(client)
        if opcode in (OP_QUERY, OP_PREPARE):
            query, _ = read_long_string(body, 0)
            if debug:
                log.debug("%s %r", "QUERY" if opcode == OP_QUERY else "PREPARE", query[:200])
            answer = fakes.answer(query)
            if answer is not None:
                client_writer.write(fakes.query_frame(stream, answer) if opcode == OP_QUERY
                                    else fakes.prepare_frame(stream, query, answer))
                await client_writer.drain()
                continue
        elif opcode == OP_EXECUTE:
            statement_id, _ = read_short_bytes(body, 0)
            answer = fakes.prepared.get(statement_id)
            if answer is not None:
                client_writer.write(fakes.query_frame(stream, answer))
                await client_writer.drain()
                continue
        body = fix_request(opcode, body)
        server_writer.write(HEADER.pack(0x03, flags, stream, opcode, len(body)) + body)
        await server_writer.drain()


async def server_to_client(server, client_writer):
    while True:
        _, flags, stream, opcode, body = await read_frame(server)
        body = fix_response(opcode, flags, body)
        client_writer.write(HEADER.pack(0x84, flags, stream, opcode, len(body)) + body)
        await client_writer.drain()


async def run_direction(coro, writer_to_close):
    """Runs one direction until its reader ends, then closes the other side's writer, so
    that the other direction ends too."""
    try:
        await coro
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # a side hung up
    except Unsupported as e:
        log.error("%s", e)
    except Exception:
        log.exception("proxy error; closing the connection")
    finally:
        writer_to_close.close()


async def handle(client, client_writer, upstream, fakes, debug):
    try:
        server, server_writer = await asyncio.open_connection(*upstream)
    except OSError as e:
        log.error("cannot reach the server at %s:%d: %s", *upstream, e)
        client_writer.close()
        return
    await asyncio.gather(
        run_direction(client_to_server(client, client_writer, server_writer, fakes, debug),
                      server_writer),
        run_direction(server_to_client(server, client_writer), client_writer),
    )


async def serve(listen, upstream, fakes, debug):
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, upstream, fakes, debug), *listen)
    log.info("listening on %s:%d (protocol v4), forwarding to %s:%d (protocol v3)",
             *listen, *upstream)
    async with server:
        await server.serve_forever()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("listen_port", type=int, help="port that v4 clients connect to")
    p.add_argument("upstream_port", type=int, help="native port of the v3 server")
    p.add_argument("--listen-host", default="127.0.0.1",
                   help="IP address to listen on; also the rpc_address in system.local")
    p.add_argument("--upstream-host", default="127.0.0.1", help="host of the v3 server")
    args = p.parse_args()

    debug = os.environ.get("V4PROXY_DEBUG", "") not in ("", "0")
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("cassandra",):  # the Python driver, used once for the snapshot
        logging.getLogger(noisy).setLevel(logging.WARNING)

    upstream = (args.upstream_host, args.upstream_port)
    try:
        local = snapshot_local(*upstream, args.listen_host)
    except Exception as e:
        log.error("cannot read system.local from %s:%d: %s", *upstream, e)
        return 1
    asyncio.run(serve((args.listen_host, args.listen_port), upstream, Fakes(local), debug))
    return 0


if __name__ == "__main__":
    sys.exit(main())
