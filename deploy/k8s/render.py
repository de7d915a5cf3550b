"""Render a kustomization the way `kubectl kustomize` does, for CI where no kustomize binary can
be installed (none is packaged for Debian or PyPI). Only the features deploy/k8s uses are
implemented; any other field is refused, so the manifests cannot quietly outgrow this renderer.

    python deploy/k8s/render.py deploy/k8s/overlays/example > rendered.yaml
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]

_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "namespace",
    "images",
    "replicas",
    "patches",
}
# Kinds the namespace transformer leaves alone (cluster-scoped).
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def _load_docs(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge as Kubernetes does it for the lists used here: lists of named objects
    (containers, env, ports, volumes, volumeMounts) merge by name; other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(item, dict) and "name" in item for item in base + patch)
    ):
        merged = [copy.deepcopy(item) for item in base]
        index = {item["name"]: i for i, item in enumerate(merged)}
        for item in patch:
            if item["name"] in index:
                merged[index[item["name"]]] = _merge(merged[index[item["name"]]], item)
            else:
                merged.append(copy.deepcopy(item))
        return merged
    return copy.deepcopy(patch)


def _find(docs: list[Doc], kind: str, name: str, where: Path) -> int:
    for i, doc in enumerate(docs):
        if doc.get("kind") == kind and doc.get("metadata", {}).get("name") == name:
            return i
    raise SystemExit(f"{where}: no {kind} named {name!r} to transform")


def _containers(doc: Doc) -> list[Doc]:
    spec = doc.get("spec", {})
    pod = spec.get("jobTemplate", {}).get("spec", {}).get("template") or spec.get("template")
    if not pod:
        return []
    pod_spec = pod.get("spec", {})
    return [*pod_spec.get("initContainers", []), *pod_spec.get("containers", [])]


def render(directory: Path, expect_kind: str = "Kustomization") -> list[Doc]:
    path = directory / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text())
    unknown = set(kustomization) - _FIELDS
    if unknown:
        raise SystemExit(f"{path}: fields this renderer does not implement: {sorted(unknown)}")
    if kustomization.get("kind", "Kustomization") != expect_kind:
        raise SystemExit(f"{path}: expected kind {expect_kind}")
    # A component's transformers act on its parent's resources; only its patches are modelled.
    if expect_kind == "Component" and set(kustomization) - {
        "apiVersion",
        "kind",
        "resources",
        "patches",
    }:
        raise SystemExit(f"{path}: a Component may only use resources and patches here")

    docs: list[Doc] = []
    for entry in kustomization.get("resources", []):
        target = (directory / entry).resolve()
        docs.extend(render(target) if target.is_dir() else _load_docs(target))
    for entry in kustomization.get("components", []):
        component = render((directory / entry).resolve(), expect_kind="Component")
        # A component's patches act on what was rendered so far; its resources join it.
        docs = _apply_component(docs, component)
    return _transform(docs, kustomization, directory)


def _apply_component(docs: list[Doc], component: list[Doc]) -> list[Doc]:
    out = list(docs)
    for doc in component:
        if doc.get("__patch__"):
            patch = {k: v for k, v in doc.items() if k != "__patch__"}
            i = _find(out, patch["kind"], patch["metadata"]["name"], Path("component"))
            out[i] = _merge(out[i], patch)
        else:
            out.append(doc)
    return out


def _transform(docs: list[Doc], kustomization: Doc, directory: Path) -> list[Doc]:
    docs = [copy.deepcopy(doc) for doc in docs]
    pending_patches: list[Doc] = []
    for entry in kustomization.get("patches", []):
        if set(entry) != {"path"}:
            raise SystemExit(f"{directory}: only `patches: - path:` (strategic merge) is supported")
        for patch in _load_docs(directory / entry["path"]):
            kind, name = patch["kind"], patch["metadata"]["name"]
            if kustomization.get("kind") == "Component":
                pending_patches.append({**patch, "__patch__": True})
                continue
            i = _find(docs, kind, name, directory)
            docs[i] = _merge(docs[i], patch)
    for entry in kustomization.get("replicas", []):
        i = _find(docs, "Deployment", entry["name"], directory)
        docs[i]["spec"]["replicas"] = int(entry["count"])
    for entry in kustomization.get("images", []):
        for doc in docs:
            for container in _containers(doc):
                image = container.get("image", "")
                repository = image.split("@", 1)[0].rsplit(":", 1)[0]
                if repository == entry["name"]:
                    name = entry.get("newName", repository)
                    tag = entry.get("newTag", image[len(repository) + 1 :] or "latest")
                    container["image"] = f"{name}:{tag}"
    if namespace := kustomization.get("namespace"):
        for doc in docs:
            if doc.get("kind") not in _CLUSTER_SCOPED:
                doc.setdefault("metadata", {})["namespace"] = namespace
    return docs + pending_patches


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)  # noqa: T201
        return 2
    docs = render(Path(argv[0]).resolve())
    leftovers = [doc for doc in docs if doc.get("__patch__")]
    if leftovers:
        raise SystemExit("a Component was rendered on its own; render a Kustomization")
    yaml.safe_dump_all(docs, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
