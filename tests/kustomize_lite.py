"""A small kustomize renderer for the tests of deploy/kubernetes/ (runs in pytest).

`kubectl kustomize` (kustomize v5) is not a Debian or PyPI package, so the tests
render the overlays with this instead, and check it against `kubectl kustomize` where
that is installed (tests/deploy/test_deploy_manifests.py). It knows only what the project's
kustomizations use, and refuses anything else rather than render it differently:

- `resources`: YAML files and folders holding a kustomization.yaml;
- `namespace`: set on every namespaced object;
- `images`: `name` -> `newName` / `newTag` in every container and init container (a
  CronJob's too);
- `patches` with `path`: strategic-merge patches matched by kind and name, whose maps
  merge and whose lists replace (as kustomize does for custom resources); in a
  built-in kind the lists kustomize merges by name (containers, init containers, env,
  volumes) merge as it merges them: the patch's items first, merged into the base's of
  the same name, then the base's others; any other list of a built-in kind is refused; a
  patch that is `$patch: delete` removes its object;
- `secretGenerator` (`envs`, `files`, `type`) with `generatorOptions:
  disableNameSuffixHash: true` (a hashed name would need every reference renamed).
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

KNOWN = {"apiVersion", "kind", "namespace", "resources", "images", "patches",
         "secretGenerator", "generatorOptions"}
# Lists of built-in kinds that kustomize's strategic merge merges by their items' name.
MERGED_BY_NAME = {"containers", "initContainers", "env", "volumes"}
CLUSTER_KINDS = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole",
                 "ClusterRoleBinding", "CustomResourceDefinition", "PriorityClass"}
BUILTIN_GROUPS = ("v1", "apps/v1", "policy/v1", "batch/v1")

Obj = dict[str, Any]


class Unsupported(Exception):
    """The kustomization uses something this renderer does not do."""


def build(folder: Path) -> list[Obj]:
    """The objects `kubectl kustomize folder` gives (in resource order)."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(spec) - KNOWN
    if unknown:
        raise Unsupported(f"{folder}: kustomization fields {sorted(unknown)}")
    objects: list[Obj] = []
    for entry in spec.get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            objects.extend(build(path))
        else:
            objects.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for patch_entry in spec.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise Unsupported(f"{folder}: patch {patch_entry}")
        for patch in yaml.safe_load_all((folder / patch_entry["path"]).read_text()):
            if patch:
                _apply_patch(objects, patch)
    for image in spec.get("images", []):
        _set_image(objects, image)
    objects.extend(_generated_secrets(folder, spec))
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_KINDS:
                obj.setdefault("metadata", {})["namespace"] = spec["namespace"]
    return objects


def _apply_patch(objects: list[Obj], patch: Obj) -> None:
    name = patch["metadata"]["name"]
    targets = [o for o in objects if o["kind"] == patch["kind"]
               and o["metadata"]["name"] == name]
    if len(targets) != 1:
        raise Unsupported(f"patch of {patch['kind']}/{name}: {len(targets)} targets")
    if patch.get("$patch") == "delete":
        objects.remove(targets[0])
        return
    builtin = patch["apiVersion"] in BUILTIN_GROUPS
    merged = _merge(targets[0], patch, builtin, path="")
    targets[0].clear()
    targets[0].update(merged)


def _merge(base: Any, patch: Any, builtin: bool, path: str) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if isinstance(value, str) and key.startswith("$"):
                raise Unsupported(f"directive {key} at {path}")
            out[key] = _merge(base.get(key), value, builtin, f"{path}.{key}")
        return out
    if isinstance(patch, list) and builtin:
        if path.rsplit(".", 1)[-1] not in MERGED_BY_NAME:
            raise Unsupported(f"a list of a built-in kind ({path}): kustomize merges by key")
        old = {item["name"]: item for item in base or []}
        merged = [_merge(old.get(item["name"]), item, builtin, f"{path}[{item['name']}]")
                  if item["name"] in old else copy.deepcopy(item) for item in patch]
        named = {item["name"] for item in patch}
        return merged + [copy.deepcopy(item) for item in base or [] if item["name"] not in named]
    return copy.deepcopy(patch)


def _generated_secrets(folder: Path, spec: Obj) -> list[Obj]:
    generators = spec.get("secretGenerator", [])
    if generators and spec.get("generatorOptions") != {"disableNameSuffixHash": True}:
        raise Unsupported(f"{folder}: generatorOptions {spec.get('generatorOptions')}")
    secrets = []
    for generator in generators:
        unknown = set(generator) - {"name", "envs", "files", "type"}
        if unknown:
            raise Unsupported(f"{folder}: secretGenerator fields {sorted(unknown)}")
        data: dict[str, str] = {}
        for env_file in generator.get("envs", []):
            for line in (folder / env_file).read_text().splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    key, _, value = line.partition("=")
                    data[key.strip()] = _b64(value.encode())
        for entry in generator.get("files", []):
            key, sep, path = entry.partition("=")
            data[key if sep else Path(entry).name] = _b64((folder / (path or key)).read_bytes())
        secrets.append({"apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": generator["name"]},
                        "type": generator.get("type", "Opaque"), "data": data})
    return secrets


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _set_image(objects: list[Obj], image: dict[str, str]) -> None:
    for obj in objects:
        spec = obj.get("spec", {})
        if obj["kind"] == "CronJob":  # its pods' template is its jobs' template's
            spec = spec.get("jobTemplate", {}).get("spec", {})
        pod = spec.get("template", {}).get("spec", {})
        for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
            name, _, tag = container["image"].partition(":")
            if name != image["name"]:
                continue
            name = image.get("newName", name)
            tag = image.get("newTag", tag)
            container["image"] = f"{name}:{tag}" if tag else name
