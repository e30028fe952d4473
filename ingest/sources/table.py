"""Tables of clips (MELD's CSVs, manifests, EmoBox JSONL): rows with their line numbers, bad rows kept as errors.

A table is treated as a damaged tar is: a row that cannot be read (a CSV row cut short or
with extra fields, a JSONL line that is not a JSON object, the unparseable tail of a file
cut mid-quote) becomes a `Row` with an `error` naming the file and line, and every other
row is read. The source turns error rows into quarantine records. A missing required
column is the one thing that stops a run: it names the columns the file does have.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass

from lake import storage
from lake.errors import LakeError


@dataclass
class Row:
    line: int  # the line of the file where the row starts (1 = the first line)
    values: dict  # column -> value (CSV: str; JSONL: as parsed); empty for an error row
    error: str | None = None  # why the row cannot be used, "FILE line N: ..."


def read_text(path: str) -> str:
    """A table's text: UTF-8 (a BOM is dropped), else cp1252 (older MELD copies); local path or URL."""
    try:
        raw = storage.read_bytes(path)
    except FileNotFoundError:
        raise LakeError(f"{path}: no such file") from None
    except OSError as e:
        raise LakeError(f"{path}: cannot read ({e})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def read_csv(path: str, required=(), what: str = "table", text: str | None = None) -> tuple[list[str], list[Row]]:
    """(header, rows) of a CSV file; `required` columns must all be in the header."""
    text = read_text(path) if text is None else text
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise LakeError(f"{path}: empty file (a {what} needs a header row: {', '.join(required)})") from None
    except csv.Error as e:
        raise LakeError(f"{path}: unreadable header row ({e})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise LakeError(f"{path}: not a {what}: missing column(s) {', '.join(missing)} "
                        f"(it has {', '.join(repr(h) for h in header) or 'none'})")
    rows: list[Row] = []
    line = reader.line_num + 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:  # e.g. a quote opened and never closed: the rest of the file is one field
            rows.append(Row(line, {}, f"{path} line {line}: unreadable from here to the end of the file ({e})"))
            break
        if fields:  # blank lines are not rows
            if len(fields) != len(header):
                cut = "cut short" if len(fields) < len(header) else "extra fields"
                rows.append(Row(line, {}, f"{path} line {line}: {cut} ({len(fields)} of {len(header)} fields)"))
            else:
                rows.append(Row(line, dict(zip(header, fields))))
        line = reader.line_num + 1
    return header, rows


def read_jsonl(path: str, text: str | None = None) -> list[Row]:
    """The rows of a JSON Lines file: one object per line; any other line is an error row."""
    text = read_text(path) if text is None else text
    rows: list[Row] = []
    lines = text.split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as e:
            tail = " (the file ends mid-line)" if n == len(lines) else ""
            rows.append(Row(n, {}, f"{path} line {n}: malformed JSON{tail}: {str(e)[:80]}"))
            continue
        if not isinstance(value, dict):
            rows.append(Row(n, {}, f"{path} line {n}: not a JSON object"))
            continue
        rows.append(Row(n, value))
    return rows


def read_table(path: str, required=(), what: str = "manifest") -> list[Row]:
    """The rows of a CSV (`.csv`) or JSON Lines (`.jsonl`) table. A CSV without a required column
    stops before any work; a row with an empty required value is an error row."""
    low = path.lower()
    if low.endswith(".csv"):
        rows = read_csv(path, required, what)[1]
    elif low.endswith((".jsonl", ".ndjson")):
        rows = read_jsonl(path)
        if rows and not any(r.error is None and all(c in r.values for c in required) for r in rows):
            seen = sorted({k for r in rows for k in r.values})
            raise LakeError(f"{path}: not a {what}: no row has the column(s) {', '.join(required)} "
                            f"(its rows have {', '.join(repr(k) for k in seen) or 'no fields'})")
    else:
        raise LakeError(f"{path}: a {what} is a .csv or .jsonl file")
    for r in rows:
        missing = [c for c in required if r.error is None and r.values.get(c) in (None, "")]
        if missing:
            r.error = f"{path} line {r.line}: no {', '.join(missing)}"
    return rows
