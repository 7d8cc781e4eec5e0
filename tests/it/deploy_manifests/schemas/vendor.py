#!/usr/bin/env python3
"""Turns CustomResourceDefinitions into the strict JSON schemas kept here.

    python3 vendor.py CRD.yaml... 

For each CRD file, and each version it serves, writes
<group>_<version>_<kind in lower case>.json next to this script: the
version's openAPIV3Schema with

* every "description" removed (they are most of the bytes, and no check
  reads them);
* "additionalProperties": false on every object that lists its properties
  and does not keep unknown fields (x-kubernetes-preserve-unknown-fields),
  because the API server drops unknown fields silently (or rejects them
  under strict field validation): a misspelt field must fail here;
* apiVersion and kind pinned to the CRD's, and both required;
* a pattern with Go's case-insensitive flag "(?i)", which ECMAScript regular
  expressions (what JSON Schema specifies) lack, spelt out letter by letter:
  "^(?i)(abort|warn)?$" becomes "^([aA][bB]...|[wW]...)?$".

Needs PyYAML (which kubernetes-validate installs). See README.md for the
sources and versions of the files committed.
"""

import json
import pathlib
import sys

import yaml


def spelt_out(pattern):
    if "(?i)" not in pattern:
        return pattern
    bare = pattern.replace("(?i)", "")
    if "[" in bare or "\\" in bare:
        sys.exit(f"cannot spell out the case-insensitive pattern {pattern!r}")
    return "".join(
        f"[{c.lower()}{c.upper()}]" if c.isascii() and c.isalpha() else c for c in bare
    )


def strict(node):
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict(value) for key, value in node.items() if key != "description"}
    if isinstance(out.get("pattern"), str):
        out["pattern"] = spelt_out(out["pattern"])
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields", False)
    ):
        out["additionalProperties"] = False
    return out


def main(paths):
    here = pathlib.Path(__file__).resolve().parent
    for path in paths:
        with open(path, encoding="utf-8") as source:
            crd = yaml.safe_load(source)
        group = crd["spec"]["group"]
        kind = crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served", False):
                continue
            api_version = f"{group}/{version['name']}"
            schema = strict(version["schema"]["openAPIV3Schema"])
            schema["properties"]["apiVersion"] = {"const": api_version}
            schema["properties"]["kind"] = {"const": kind}
            schema["required"] = sorted(
                set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"}
            )
            schema = {"$schema": "http://json-schema.org/draft-07/schema#", **schema}
            name = f"{group}_{version['name']}_{kind.lower()}.json"
            with open(here / name, "w", encoding="utf-8") as target:
                json.dump(schema, target, indent=1, sort_keys=True)
                target.write("\n")
            print(name)


if __name__ == "__main__":
    main(sys.argv[1:])
