"""Bundle the JSON schemas of the Kubernetes kinds deploy/kubernetes uses into one small file for the tests.

Usage: python tests/specs/kubernetes_schema.py DIR > tests/specs/kubernetes-strict.json, where DIR is one version's
``*-local-strict`` folder of kubernetes-json-schema (as shipped in the kubernetes-validate wheel on PyPI,
generated from Kubernetes' own OpenAPI description): its ``_definitions.json`` holds every type. The file
written keeps the types the kinds below reach, with their references made local and descriptions dropped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

KINDS = {
    ("apps/v1", "Deployment"): "io.k8s.api.apps.v1.Deployment",
    ("v1", "Service"): "io.k8s.api.core.v1.Service",
    ("v1", "ConfigMap"): "io.k8s.api.core.v1.ConfigMap",
    ("v1", "Secret"): "io.k8s.api.core.v1.Secret",
    ("policy/v1", "PodDisruptionBudget"): "io.k8s.api.policy.v1.PodDisruptionBudget",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "io.k8s.api.autoscaling.v2.HorizontalPodAutoscaler",
}
PREFIXES = ("/api/_definitions.json#/$defs/", "#/$defs/")


def main() -> int:
    folder = Path(sys.argv[1])
    defs: dict[str, Any] = json.loads((folder / "_definitions.json").read_text())["$defs"]
    kept: dict[str, Any] = {}

    def visit(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                if k == "description":
                    continue
                prefix = next((p for p in PREFIXES if isinstance(v, str) and v.startswith(p)), None)
                if k == "$ref" and prefix is not None:
                    name = v[len(prefix):]
                    if name not in kept:
                        kept[name] = None
                        kept[name] = visit(defs[name])
                    v = "#/$defs/" + name
                out[k] = visit(v) if k not in ("enum", "required") else v
            return out
        if isinstance(node, list):
            return [visit(v) for v in node]
        return node

    for name in KINDS.values():
        visit({"$ref": PREFIXES[0] + name})
    bundle = {"$schema": "https://json-schema.org/draft/2020-12/schema",
              "x-source": f"kubernetes-json-schema {folder.name} (from Kubernetes' OpenAPI description)",
              "x-kinds": {f"{api} {kind}": name for (api, kind), name in KINDS.items()},
              "$defs": dict(sorted(kept.items()))}
    json.dump(bundle, sys.stdout, indent=None, separators=(",", ":"), sort_keys=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
