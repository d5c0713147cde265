#!/usr/bin/env python3
"""Convert apiextensions.k8s.io/v1beta1 CustomResourceDefinitions to v1.

SMI's module still ships its TrafficSplit CRD as v1beta1, an API Kubernetes removed in 1.22.
This is the mapping the apiserver itself applied when both were served: the top-level schema,
printer columns and subresources move into each version, and a root schema gets `type: object`
so that it is structural.

usage: crd-v1beta1-to-v1.py IN.yaml > OUT.yaml
"""
import copy
import sys

import yaml


def convert(crd):
    if crd.get("apiVersion") != "apiextensions.k8s.io/v1beta1":
        return crd
    spec = crd["spec"]
    schema = (spec.pop("validation", None) or {}).get("openAPIV3Schema") or {}
    schema.setdefault("type", "object")
    if schema.get("properties") and "x-kubernetes-preserve-unknown-fields" not in schema:
        schema["properties"].setdefault("spec", {}).setdefault("type", "object")
    columns = [
        {("jsonPath" if k == "JSONPath" else k): v for k, v in column.items()}
        for column in spec.pop("additionalPrinterColumns", None) or []
    ]
    subresources = spec.pop("subresources", None)
    only_version = spec.pop("version", None)
    versions = spec.get("versions") or [{"name": only_version, "served": True, "storage": True}]
    for version in versions:
        version.setdefault("schema", {"openAPIV3Schema": copy.deepcopy(schema)})
        if columns:
            version.setdefault("additionalPrinterColumns", copy.deepcopy(columns))
        if subresources:
            version.setdefault("subresources", copy.deepcopy(subresources))
    spec["versions"] = versions
    spec.pop("preserveUnknownFields", None)
    crd["apiVersion"] = "apiextensions.k8s.io/v1"
    return crd


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    with open(sys.argv[1]) as f:
        docs = [convert(d) for d in yaml.safe_load_all(f) if d]
    yaml.safe_dump_all(docs, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
