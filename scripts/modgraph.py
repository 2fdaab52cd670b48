#!/usr/bin/env python3
"""The module graph of each crate, drawn from the code's own `crate::` paths.

For each source folder given, reads the crate root (`lib.rs`) for its line
`//! Layers: a, b, c, ...`: the top-level modules from the edge in, each
allowed to import only those after it. Prints every import between
top-level modules with the files that make it, then fails (exit 1) on an
import that points up the list, on a module the list does not name, or on a
circle. Test modules (`#[cfg(test)]` to the end of a file) may reach
anywhere; comments are not imports.

    scripts/modgraph.py fsd/src tracker/src protocol/src
"""
import os
import re
import sys


def top_module(src, path):
    parts = os.path.relpath(path, src)[:-3].split(os.sep)
    return None if parts[0] in ("main", "lib") else parts[0]


def code_of(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    text = re.split(r"#\[cfg\(test\)\]", text)[0]
    return "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("//"))


def imports(src):
    """{(from, to): {files}} between top-level modules."""
    edges = {}
    known = modules(src)
    for root, _, files in os.walk(src):
        for f in sorted(files):
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            m = top_module(src, path)
            if m is None:
                continue
            text = code_of(path)
            targets = set(re.findall(r"crate::([a-z_][a-z0-9_]*)", text))
            for grp in re.findall(r"use crate::\{([^;]*)\};", text, re.S):
                targets |= set(re.findall(r"(?:^|[,{\s])([a-z_][a-z0-9_]*)(?:::|\s*[,}]|$)", grp))
            # Items re-exported at the root (`crate::Identity`) are no module.
            for t in (targets & known) - {m}:
                edges.setdefault((m, t), set()).add(os.path.relpath(path, src))
    return edges


def layers(src):
    lib = os.path.join(src, "lib.rs")
    for line in open(lib, encoding="utf-8"):
        m = re.match(r"//!\s*Layers:\s*(.*)", line)
        if m:
            return [x.strip().strip("`") for x in m.group(1).rstrip(". \n").split(",")]
    return None


def modules(src):
    out = set()
    for entry in os.listdir(src):
        path = os.path.join(src, entry)
        if entry.endswith(".rs") and entry not in ("lib.rs", "main.rs"):
            out.add(entry[:-3])
        elif os.path.isdir(path) and os.path.exists(os.path.join(path, "mod.rs")):
            out.add(entry)
    return out


def check(src):
    errors = []
    order = layers(src)
    if order is None:
        return [f"{src}/lib.rs has no `//! Layers:` line"]
    rank = {m: i for i, m in enumerate(order)}
    for m in sorted(modules(src) - set(order)):
        errors.append(f"{src}: module {m} is not in the Layers line")
    edges = imports(src)
    print(f"{src} (layers: {', '.join(order)})")
    for (a, b), files in sorted(edges.items(), key=lambda e: (rank.get(e[0][0], 99), rank.get(e[0][1], 99))):
        up = a in rank and b in rank and rank[b] <= rank[a]
        print(f"  {a} -> {b}{'   UP' if up else ''}   ({', '.join(sorted(files))})")
        if up:
            errors.append(f"{src}: {a} imports {b}, which is above it ({', '.join(sorted(files))})")
    return errors


def main():
    errors = []
    for src in sys.argv[1:]:
        errors += check(src)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
