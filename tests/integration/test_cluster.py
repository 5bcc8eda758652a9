"""The Kubernetes cluster site.yml builds on local nodes: nodes, pod network, Services, checkpoint API."""

from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.error
import urllib.request

import pytest
import yaml
from helpers import run_playbook
from kubernetes import client, config
from kubernetes.stream import stream

from integration.nodes import NODES, node_run, scp, write_busybox_image

pytestmark = pytest.mark.nodes

IMAGE = "localhost/podmigrate/busybox:test"
WORKERS = [name for name, (_, group) in NODES.items() if group == "workers"]
CONTROL_PLANE = next(name for name, (_, group) in NODES.items() if group == "control_plane")
# A web server whose page names its pod, and an in-memory counter the checkpoint carries.
SERVE = ("mkdir -p /www && hostname > /www/index.html && httpd -p 8080 -h /www && "
         "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done")


@pytest.fixture(scope="module")
def api(cluster):
    kubeconfig = cluster["state"] / "kubeconfig"
    assert kubeconfig.stat().st_mode & 0o077 == 0, "the admin kubeconfig must be root-only"
    return client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))


@pytest.fixture(scope="module")
def busybox(cluster, tmp_path_factory):
    """A static busybox image from the project's OCI writer, imported into each worker's containerd."""
    path = tmp_path_factory.mktemp("cluster-image") / "busybox.tar"
    write_busybox_image(path, IMAGE, ("sh", "httpd", "nc", "hostname", "mkdir", "cat", "sleep", "printf"))
    for name in WORKERS:
        scp(cluster["state"], path, NODES[name][0], "/tmp/busybox.tar")
        node_run(cluster, name, "ctr -n k8s.io images import /tmp/busybox.tar && rm /tmp/busybox.tar")
    return IMAGE


@pytest.fixture(scope="module")
def web(api, busybox):
    """One web pod pinned to each worker, and a Service in front of the second one."""
    pods = {}
    for name in WORKERS:
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name=f"web-{name}", labels={"app": f"web-{name}"}),
            spec=client.V1PodSpec(node_name=name, termination_grace_period_seconds=1, containers=[
                client.V1Container(name="web", image=busybox, image_pull_policy="Never",
                                   command=["/bin/sh", "-c", SERVE],
                                   ports=[client.V1ContainerPort(container_port=8080)])]))
        api.create_namespaced_pod("default", pod)
        pods[name] = f"web-{name}"
    api.create_namespaced_service("default", client.V1Service(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1ServiceSpec(selector={"app": f"web-{WORKERS[-1]}"},
                                  ports=[client.V1ServicePort(port=80, target_port=8080)])))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = {n: api.read_namespaced_pod(p, "default").status for n, p in pods.items()}
            if all(s.phase == "Running" and s.pod_ip for s in status.values()):
                break
            time.sleep(1)
        yield {n: api.read_namespaced_pod(p, "default") for n, p in pods.items()}
    finally:
        api.delete_namespaced_service("web", "default")
        for p in pods.values():
            api.delete_namespaced_pod(p, "default", grace_period_seconds=0)


def pod_exec(api, pod, command):
    return stream(api.connect_get_namespaced_pod_exec, pod, "default", command=command,
                  stderr=True, stdin=False, stdout=True, tty=False)


def http_get(api, pod, address, port):
    """The body of http://address:port/ as fetched from inside ``pod`` (busybox nc; its
    static wget cannot resolve anything without the C library's NSS modules)."""
    response = pod_exec(api, pod, ["sh", "-c", f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {address} {port}"])
    head, _, body = response.replace("\r\n", "\n").partition("\n\n")
    return body.strip() if head.startswith("HTTP/1.") and " 200 " in head.splitlines()[0] else ""


def test_every_node_is_ready_at_the_pinned_version(api):
    nodes = {n.metadata.name: n for n in api.list_node().items}
    assert sorted(nodes) == sorted(NODES)
    for name, node in nodes.items():
        ready = {c.type: c.status for c in node.status.conditions}["Ready"]
        assert ready == "True", (name, node.status.conditions)
        assert node.status.node_info.kubelet_version == "v1.34.2"
        assert node.status.node_info.container_runtime_version.startswith("containerd://2.")


def test_the_migration_engine_has_an_identity_of_its_own_allowed_only_what_a_migration_needs(cluster):
    """migrate.yml talks to the API server as user podmigrate-engine (a client certificate of
    the cluster's CA, root-only on the controller), not as the cluster's admin. The API
    server itself answers what that user may do (SelfSubjectAccessReview, nothing is
    tried): a migration's calls yes; secrets, exec, the kubelet API, nodes, RBAC, the
    controllers themselves no."""
    kubeconfig = cluster["state"] / "engine.kubeconfig"
    assert kubeconfig.stat().st_mode & 0o077 == 0, "the engine's kubeconfig must be root-only"
    engine = config.new_client_from_config(str(kubeconfig))
    review = client.AuthorizationV1Api(engine)

    def allowed(verb, resource, group="", subresource=None, namespace="default"):
        attributes = client.V1ResourceAttributes(verb=verb, resource=resource, group=group,
                                                 subresource=subresource, namespace=namespace)
        answer = review.create_self_subject_access_review(client.V1SelfSubjectAccessReview(
            spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attributes)))
        return answer.status.allowed

    whoami = client.AuthenticationV1Api(engine).create_self_subject_review(client.V1SelfSubjectReview())
    assert whoami.status.user_info.username == "podmigrate-engine"
    assert "system:masters" not in (whoami.status.user_info.groups or [])
    needs = [("get", "pods"), ("list", "pods"), ("create", "pods"), ("delete", "pods"), ("list", "nodes"),
             ("get", "namespaces"), ("list", "persistentvolumeclaims"), ("create", "events"),
             ("create", "leases", "coordination.k8s.io"), ("update", "leases", "coordination.k8s.io"),
             ("delete", "leases", "coordination.k8s.io"), ("list", "leases", "coordination.k8s.io"),
             # a ReplicaSet's pod handed over at the commit (its cost, its owner)
             ("patch", "pods"), ("update", "replicasets", "apps", "finalizers"),
             # a Job's pod handed over: the guard (a policy and its binding, for a moment)
             ("update", "jobs", "batch", "finalizers"),
             # a StatefulSet's restored pod, created with its ownerReference
             ("update", "statefulsets", "apps", "finalizers"),
             ("create", "validatingadmissionpolicies", "admissionregistration.k8s.io", None, None),
             ("delete", "validatingadmissionpolicybindings", "admissionregistration.k8s.io", None, None),
             # a drain: the cordon, and the eviction of what cannot move
             ("patch", "nodes", "", None, None), ("create", "pods", "", "eviction")]
    assert [n for n in needs if not allowed(*n)] == []
    never = [("get", "secrets"), ("list", "secrets"), ("create", "pods", "", "exec"), ("get", "nodes", "", "proxy"),
             ("update", "pods"), ("update", "pods", "", "status"), ("delete", "nodes"), ("update", "nodes"),
             ("update", "replicasets", "apps"), ("patch", "deployments", "apps"), ("update", "jobs", "batch"),
             ("update", "statefulsets", "apps"),
             ("update", "validatingadmissionpolicies", "admissionregistration.k8s.io", None, None),
             ("create", "mutatingwebhookconfigurations", "admissionregistration.k8s.io", None, None),
             ("create", "clusterrolebindings", "rbac.authorization.k8s.io"), ("get", "configmaps"),
             ("create", "serviceaccounts", "", "token")]
    assert [n for n in never if allowed(*n)] == []
    # and it reads what a migration reads
    assert {n.metadata.name for n in client.CoreV1Api(engine).list_node().items} == set(NODES)


def test_kubelets_evict_by_absolute_disk_thresholds_on_local_nodes(api):
    # the nodes share the host's disk: percentages of it evicted big migrations' pods
    for node in api.list_node().items:
        live = json.loads(api.connect_get_node_proxy_with_path(node.metadata.name, "configz",
                                                               _preload_content=False).read())
        assert live["kubeletconfig"]["evictionHard"] == {
            "memory.available": "100Mi", "nodefs.available": "4Gi", "imagefs.available": "4Gi",
            "nodefs.inodesFree": "5%", "imagefs.inodesFree": "5%"}, node.metadata.name


def test_a_pod_runs_on_each_worker_with_a_pod_ip_from_its_node(api, web):
    nodes = {n.metadata.name: n for n in api.list_node().items}
    for name, pod in web.items():
        assert pod.status.phase == "Running", pod.status
        assert pod.spec.node_name == name
        prefix = nodes[name].spec.pod_cidr.rsplit(".", 2)[0]
        assert pod.status.pod_ip.startswith(prefix + "."), (pod.status.pod_ip, nodes[name].spec.pod_cidr)


def test_a_pod_reaches_a_pod_on_the_other_worker_by_pod_ip(api, web):
    first, second = WORKERS[0], WORKERS[-1]
    page = http_get(api, web[first].metadata.name, web[second].status.pod_ip, 8080)
    assert page == web[second].metadata.name


def test_a_service_ip_reaches_its_pod_on_the_other_worker(api, web):
    service = api.read_namespaced_service("web", "default")
    page = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kube-proxy programs the rules a moment after the endpoints appear
        page = http_get(api, web[WORKERS[0]].metadata.name, service.spec.cluster_ip, 80)
        if page == web[WORKERS[-1]].metadata.name:
            break
        time.sleep(1)
    assert page == web[WORKERS[-1]].metadata.name


def test_every_pod_has_mptcp_off_and_the_node_keeps_its_own_setting(api, cluster, web):
    # CRIU cannot dump an MPTCP socket; the CNI tuning step turns MPTCP off in each pod's
    # network namespace only, so programs that ask for it (Go >= 1.24) get plain TCP.
    for name, pod in web.items():
        assert pod_exec(api, pod.metadata.name, ["cat", "/proc/sys/net/mptcp/enabled"]).strip() == "0", name
        assert node_run(cluster, name, "cat /proc/sys/net/mptcp/enabled").strip() == "1", name


def test_no_kubelet_removes_the_cgroups_of_another_nodes_pod(api, cluster, web):
    # Each kubelet removes the pod cgroups it does not know (its orphan cleanup, every 2 s).
    # Nodes sharing one cgroup tree removed each other's empty container cgroups: a
    # container being restored lost its cgroup before runc could join it. An empty cgroup
    # inside a running pod's, as runc makes for a new container, must stay.
    name = WORKERS[0]
    uid = web[name].metadata.uid
    pod_dir = node_run(cluster, name, f"find /sys/fs/cgroup/devices/kubepods -maxdepth 2 -name pod{uid}").strip()
    assert pod_dir, f"no devices cgroup of pod {uid} on {name}"
    probe = f"{pod_dir}/pmt-probe"
    node_run(cluster, name, f"mkdir {probe}")
    try:
        time.sleep(10)  # several rounds of every kubelet's cleanup
        assert node_run(cluster, name, f"test -d {probe} && echo kept").strip() == "kept", \
            f"{probe} was removed by a kubelet that does not own the pod"
    finally:
        node_run(cluster, name, f"rmdir {probe} 2>/dev/null || true")


def kubelet_post(address, path, cert=None):
    """POST to a kubelet's API over TLS, optionally with a client certificate (cert, key)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the kubelet's serving certificate is self-signed
    if cert:
        context.load_cert_chain(*cert)
    request = urllib.request.Request(f"https://{address}:10250{path}", method="POST", data=b"")
    try:
        with urllib.request.urlopen(request, context=context, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture(scope="module")
def client_certs(cluster, tmp_path_factory):
    """The API server's kubelet client certificate, and kube-proxy's (a user without checkpoint rights)."""
    work = tmp_path_factory.mktemp("certs")
    work.chmod(0o700)
    pki = "/etc/kubernetes/pki"
    files = {"apiserver.crt": f"{pki}/apiserver-kubelet-client.crt",
             "apiserver.key": f"{pki}/apiserver-kubelet-client.key"}
    for local, remote in files.items():
        (work / local).write_text(node_run(cluster, CONTROL_PLANE, f"cat {remote}"))
        (work / local).chmod(0o600)
    proxy = yaml.safe_load(node_run(cluster, CONTROL_PLANE, "cat /etc/kubernetes/kube-proxy.conf"))
    user = proxy["users"][0]["user"]
    for key, local in (("client-certificate-data", "proxy.crt"), ("client-key-data", "proxy.key")):
        (work / local).write_bytes(base64.b64decode(user[key]))
        (work / local).chmod(0o600)
    return {"apiserver": (str(work / "apiserver.crt"), str(work / "apiserver.key")),
            "proxy": (str(work / "proxy.crt"), str(work / "proxy.key"))}


def test_the_checkpoint_api_writes_a_root_only_archive_for_an_authorised_client(api, cluster, web, client_certs):
    name = WORKERS[0]
    pod = web[name].metadata.name
    status, body = kubelet_post(NODES[name][0], f"/checkpoint/default/{pod}/web", client_certs["apiserver"])
    assert status == 200, body
    archives = json.loads(body)["items"]
    assert len(archives) == 1 and archives[0].startswith("/var/lib/kubelet/checkpoints/checkpoint-"), archives
    out = node_run(cluster, name, f"stat -L -c '%a %s' {archives[0]} && tar -tf {archives[0]} && rm -f {archives[0]}")
    mode, size = out.splitlines()[0].split()
    assert mode == "600" and int(size) > 0, out
    members = out.splitlines()[1:]
    assert "checkpoint/pages-1.img" in members or any(m.startswith("checkpoint/pages-") for m in members), members
    assert "config.dump" in members and "spec.dump" in members, members
    # The checkpoint leaves the container running, where it was.
    after = api.read_namespaced_pod(pod, "default").status
    assert after.phase == "Running" and after.container_statuses[0].restart_count == 0


def test_the_checkpoint_api_refuses_anonymous_and_unauthorised_clients(cluster, web, client_certs):
    name = WORKERS[0]
    path = f"/checkpoint/default/{web[name].metadata.name}/web"
    status, body = kubelet_post(NODES[name][0], path)
    assert status == 401, (status, body)
    # kube-proxy's certificate is a valid cluster identity without the right: webhook authorisation, not AlwaysAllow.
    status, body = kubelet_post(NODES[name][0], path, client_certs["proxy"])
    assert status == 403, (status, body)
    assert node_run(cluster, name, "ls -A /var/lib/kubelet/checkpoints/").strip() == ""


def test_a_cni_file_newer_than_containerd_gets_containerd_restarted_even_without_a_handler(cluster, api):
    """A run cut short after writing the CNI file used to leave containerd blind to it
    (its handler never ran): the role now compares the two ages on the node."""
    name = WORKERS[0]
    pid = node_run(cluster, name, "systemctl show --property MainPID --value containerd").strip()
    node_run(cluster, name, "sleep 1; touch /etc/cni/net.d/10-podmigrate.conflist")
    run = run_playbook("playbooks/cluster.yml", cluster["inventory"])
    assert run.rc == 0, run.output[-4000:]
    recap = run.recap()
    assert recap[name]["changed"] == 1, run.output[-4000:]
    assert all(recap[other]["changed"] == 0 for other in NODES if other != name), recap
    assert node_run(cluster, name, "systemctl show --property MainPID --value containerd").strip() != pid
    ready = {c.type: c.status for c in api.read_node(name).status.conditions}["Ready"]
    assert ready == "True"
