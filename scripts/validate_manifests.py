"""Validates Kubernetes manifests (scripts/validate-manifests.sh installs what this needs).

Every document of every file given: a built-in kind against the Kubernetes OpenAPI schemas of
each version in KUBERNETES_VERSIONS with kubernetes-validate, strict (unknown fields rejected);
a KEDA ScaledObject against KEDA 2.16.1's schema, from the pydantic models that
cloudcoil-models-keda generates from KEDA's CRDs, as a JSON Schema made strict the same way,
checked with jsonschema. Any other kind fails: a manifest nobody checked is not "valid".
Prints one line per document; exits 1 on the first file with an error after reporting it all.
"""

import sys

import jsonschema
import kubernetes_validate
import yaml

# The oldest Kubernetes the manifests claim (policy/v1 PodDisruptionBudget, autoscaling/v2 HPA:
# 1.23+; we say 1.25, the oldest schema kubernetes-validate ships) and the newest it ships.
KUBERNETES_VERSIONS = ["1.25.0", kubernetes_validate.latest_version()]
KEDA_VERSION = "2.16.1"


def strict(schema):
    """Rejects unknown fields: every object schema listing its properties gets
    additionalProperties false (maps, which list none, keep their value schema)."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        for value in schema.values():
            strict(value)
    elif isinstance(schema, list):
        for value in schema:
            strict(value)
    return schema


def keda_validator():
    from cloudcoil.models.keda.v1alpha1 import ScaledObject

    schema = strict(ScaledObject.model_json_schema(by_alias=True))
    return ScaledObject, jsonschema.Draft202012Validator(schema)


_keda = None


def check(doc):
    """(errors, what it was checked against) of one document."""
    global _keda
    kind, api = doc.get("kind"), doc.get("apiVersion", "")
    errors = []
    if api.startswith("keda.sh/"):
        if kind != "ScaledObject":
            errors.append(f"no schema here for KEDA's {kind}")
        else:
            _keda = _keda or keda_validator()
            model, validator = _keda
            errors += [
                f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                for e in validator.iter_errors(doc)
            ]
            try:
                model.model_validate(doc)
            except Exception as e:  # pydantic's ValidationError lists every field
                errors.append(str(e))
        checked = f"KEDA {KEDA_VERSION}"
    else:
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                errors.append(f"Kubernetes {version}: {e.message} at {'/'.join(map(str, e.path))}")
            except kubernetes_validate.SchemaNotFoundError:
                errors.append(f"Kubernetes {version}: no schema for {api} {kind}")
        checked = "Kubernetes " + ", ".join(KUBERNETES_VERSIONS)
    return errors, checked


def consistency(kinds):
    """What the schemas cannot see: the kubelet's grace period covers the preStop sleep plus the
    server's drain, and the ScaledObject drives the Deployment and the HPA there are."""
    errors = []
    deployment = kinds.get("Deployment")
    if deployment:
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        grace = int(env.get("JINA_SHUTDOWN_GRACE", 30))  # the server's default
        command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        sleep = int(command[1]) if command[:1] == ["sleep"] else 0
        period = pod.get("terminationGracePeriodSeconds", 30)
        if period < sleep + grace:
            errors.append(f"terminationGracePeriodSeconds {period} < preStop sleep {sleep} + JINA_SHUTDOWN_GRACE {grace}")
    scaled = kinds.get("ScaledObject")
    if scaled:
        target = scaled["spec"]["scaleTargetRef"]["name"]
        if not deployment or deployment["metadata"]["name"] != target:
            errors.append(f"the ScaledObject scales {target!r}, not a Deployment here")
        hpa = scaled["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("name")
        if "HorizontalPodAutoscaler" in kinds and hpa != kinds["HorizontalPodAutoscaler"]["metadata"]["name"]:
            errors.append(f"the ScaledObject's HPA {hpa!r} is not the HPA it takes over")
    for e in errors:
        print(f"FAIL consistency: {e}")
    if not errors:
        print("ok   consistency: grace period covers preStop + drain; ScaledObject targets the Deployment and its HPA")
    return len(errors)


def self_test(docs):
    """The checks can fail: each kind found, with an unknown field slipped into its spec, and
    with a wrong type, must be rejected."""
    import copy

    for doc in docs:
        for broken in ("unknown field", "wrong type"):
            bad = copy.deepcopy(doc)
            if broken == "unknown field":
                bad["spec"]["notAField"] = 1
            else:
                bad["metadata"]["name"] = ["not", "a", "string"]
            errors, checked = check(bad)
            if not errors:
                print(f"FAIL self-test: {doc['kind']} with a {broken} passed ({checked})")
                return 1
    print(f"ok   self-test: {len(docs)} kinds rejected with an unknown field and with a wrong type")
    return 0


def main(paths):
    failed = 0
    kinds = {}
    for path in paths:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        if not docs:
            print(f"FAIL {path}: no documents")
            failed += 1
        for doc in docs:
            kind = doc.get("kind")
            kinds.setdefault(kind, doc)
            name = f"{path}: {kind}/{doc.get('metadata', {}).get('name')}"
            errors, checked = check(doc)
            if errors:
                failed += 1
                print(f"FAIL {name} ({checked})")
                for e in errors:
                    print(f"     {e}")
            else:
                print(f"ok   {name} ({checked}, strict)")
    if not failed:
        failed += consistency(kinds)
        failed += self_test(list(kinds.values()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
