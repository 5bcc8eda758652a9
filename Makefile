# The two commands a newcomer needs (see README.md):
#   make demo   - set up this machine, build the Kubernetes artifacts and the local cluster,
#                 then run the counter on it and migrate it to another node
#   make test   - set up this machine, run every check and test
SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(PATH):/usr/local/go/bin
PLAYBOOKS := site.yml teardown.yml $(wildcard playbooks/*.yml)

.PHONY: setup demo test test-cluster test-others lint lint-checks sanity unit teardown status artifacts

setup:
	scripts/setup

demo: setup artifacts
	ansible-playbook site.yml
	scripts/podmigrate nodes
	$$(ls -d .podmigrate/cache/artifacts/kubernetes-v*/bin/kubectl | tail -n 1) --kubeconfig .podmigrate/kubeconfig get nodes -o wide
	scripts/demo

test: setup
	$(MAKE) --no-print-directory -j2 test-cluster test-others

# Two lines of work at once (both must pass). The integration tests need the artifacts and
# share one cluster of local nodes, on a bridge of its own: they run one after another
# once the artifacts are built. Meanwhile the linters and the tests that need neither
# run: the Azure provider, the seed-fork molecule scenario (its node has a bridge and
# state of its own) and the unit tests.
# Each line's output is shown as it comes, whole lines only, each under its line's name.
test-cluster: artifacts
	set -o pipefail; pytest --durations=25 tests/integration --ignore=tests/integration/test_molecule.py 2>&1 | sed -u 's/^/[cluster] /'

test-others: setup
	set -o pipefail; $(MAKE) --no-print-directory lint-checks 2>&1 | sed -u 's/^/[others] /'
	set -o pipefail; pytest tests/azure tests/unit tests/integration/test_molecule.py 2>&1 | sed -u 's/^/[others] /'

lint: setup
	$(MAKE) --no-print-directory lint-checks

lint-checks:
	yamllint --strict .
	ansible-lint
	ruff check .
	for p in $(PLAYBOOKS); do ansible-playbook --syntax-check "$$p" >/dev/null || exit 1; done
	scripts/ansible-sanity

# ansible-test sanity on the collection podmigrate.cluster, on .venv's Python, no containers
sanity: setup
	scripts/ansible-sanity

unit: setup
	pytest tests/unit

teardown: setup
	ansible-playbook teardown.yml

status:
	scripts/podmigrate nodes

artifacts: setup
	scripts/build-artifacts
