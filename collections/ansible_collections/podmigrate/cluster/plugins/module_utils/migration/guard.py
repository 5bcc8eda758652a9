# Copyright: podmigrate contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A guard against a controller starting a pod afresh while a migration hands its pod over.

At the commit of a Job's pod the source stops being the Job's before the restored pod
becomes it (the other order would give the Job two active pods, and it would delete one,
perhaps the restored one). For that moment the Job counts no active pod and would create
one from its template, without the memory. A StatefulSet's pod keeps its name: the source
pod is deleted before the restored pod of that name is created, and for that moment the
StatefulSet would create the pod afresh. The guard is a ValidatingAdmissionPolicy (the
API server's own CEL admission, no webhook to run) with its binding, named after the
migration, that refuses any pod created in the pod's namespace with an ownerReference to
that controller (a Job's) or of that name (a StatefulSet's), unless it is the migration's
restored pod (annotation ``podmigrate.io/restore``). The controller's create is refused
(it tries again later, by then seeing the restored pod). The API server applies a new
policy once its informer has seen it: ``install`` waits until a dry-run create of such a
pod is refused."""

from __future__ import annotations

import time

from ansible_collections.podmigrate.cluster.plugins.module_utils.migration.manifest import RESTORE_ANNOTATION

EFFECTIVE_SECONDS = 30  # the longest a new policy may take to be applied


class GuardError(Exception):
    """The guard could not be put in place."""


def policy_name(migration_id):
    return f"podmigrate-{migration_id}"


def policy(migration_id, namespace, owner_uid=None, pod_name=None):
    """The policy and its binding (dicts) refusing pods in ``namespace`` owned by ``owner_uid``
    (or named ``pod_name``) that are not migration ``migration_id``'s restored pod."""
    name = policy_name(migration_id)
    labels = {"app.kubernetes.io/managed-by": "podmigrate"}
    if pod_name is not None:
        other = f"object.metadata.name != '{pod_name}'"
        guarded = f"{namespace}/{pod_name}"
    else:
        other = ("!has(object.metadata.ownerReferences) || "
                 f"!object.metadata.ownerReferences.exists(r, r.uid == '{owner_uid}')")
        guarded = "this controller's pod"
    expression = (
        f"{other} || (has(object.metadata.annotations) && '{RESTORE_ANNOTATION}' in object.metadata.annotations"
        f" && object.metadata.annotations['{RESTORE_ANNOTATION}'] == '{migration_id}')")
    return ({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
             "metadata": {"name": name, "labels": labels},
             "spec": {"failurePolicy": "Fail",
                      "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                                              "operations": ["CREATE"], "resources": ["pods"]}]},
                      "validations": [{"expression": expression, "reason": "Forbidden",
                                       "message": f"podmigrate migration {migration_id} is handing {guarded} "
                                                  "over to its restored pod: no new pod meanwhile"}]}},
            {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
             "metadata": {"name": name, "labels": labels},
             "spec": {"policyName": name, "validationActions": ["Deny"],
                      "matchResources": {"namespaceSelector": {"matchLabels": {
                          "kubernetes.io/metadata.name": namespace}}}}})


class CreationGuard:
    def __init__(self, api_client, namespace, migration_id, owner, pod_name=None, log=None):
        """Guards the pods of controller ``owner`` (an ownerReference), or with ``pod_name``
        the pod of that name (owner is then only named in messages)."""
        from kubernetes import client

        self.client = client
        self.api = client.AdmissionregistrationV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.namespace, self.id, self.owner, self.pod_name = namespace, migration_id, owner, pod_name
        self.name = policy_name(migration_id)
        self.log = log or (lambda line: None)

    def install(self):
        """The policy and its binding created (again: a create that meets them is fine), then
        waited for until the API server applies them."""
        from kubernetes.client.rest import ApiException

        body, binding = policy(self.id, self.namespace, self.owner["uid"], self.pod_name)
        for create, manifest in ((self.api.create_validating_admission_policy, body),
                                 (self.api.create_validating_admission_policy_binding, binding)):
            try:
                create(manifest)
            except ApiException as exc:
                if exc.status != 409:
                    raise
        started = time.monotonic()
        while not self.refuses():
            if time.monotonic() - started > EFFECTIVE_SECONDS:
                raise GuardError(f"the admission policy {self.name} was not applied within {EFFECTIVE_SECONDS} s")
            time.sleep(0.05)
        return round(time.monotonic() - started, 3)

    def problems(self):
        """(Before anything changes) why the guard could not be put in place: the API server
        lacks ValidatingAdmissionPolicy, or the engine may not create one (a dry run)."""
        from kubernetes.client.rest import ApiException

        body, binding = policy(self.id, self.namespace, self.owner["uid"], self.pod_name)
        try:
            self.api.create_validating_admission_policy(body, dry_run="All")
            self.api.create_validating_admission_policy_binding(binding, dry_run="All")
        except ApiException as exc:
            return [f"the hand-over of a {self.owner['kind']}'s pod needs a ValidatingAdmissionPolicy "
                    f"(admissionregistration.k8s.io/v1, Kubernetes >= 1.30) the engine may create: "
                    f"{exc.status} {exc.reason}"]
        return []

    def refuses(self):
        """Whether a pod the controller would create is refused now (a dry run: nothing is made)."""
        from kubernetes.client.rest import ApiException

        meta = {"name": self.pod_name} if self.pod_name else \
            {"generateName": "podmigrate-guard-probe-",
             "ownerReferences": [{k: self.owner[k] for k in ("apiVersion", "kind", "name", "uid")}]}
        probe = {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                 "spec": {"containers": [{"name": "probe", "image": "podmigrate.invalid/probe"}]}}
        try:
            self.core.create_namespaced_pod(self.namespace, probe, dry_run="All")
        except ApiException as exc:
            if exc.status in (403, 422) and self.name.removeprefix("podmigrate-") in (exc.body or ""):
                return True
            if exc.status == 409:  # the name is taken (the source pod): admission let the create pass
                return False
            raise
        return False

    def remove(self):
        from kubernetes.client.rest import ApiException

        api = self.api
        for delete in (api.delete_validating_admission_policy_binding, api.delete_validating_admission_policy):
            try:
                delete(self.name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
