"""The chart's CRD is the project's CRD (crds/), kept on uninstall, and can be left out."""

from __future__ import annotations

import yaml

from tests.unit.chart.rendering import CRD_CHART_COPY, CRD_SOURCE, OPTION_SETS, rendered


def test_chart_copy_is_identical_to_crds() -> None:
    assert CRD_SOURCE.exists(), "crds/sipsockets.io_sipsockets.yaml is missing"
    assert CRD_CHART_COPY.read_bytes() == CRD_SOURCE.read_bytes(), (
        "helm/sipsockets/files/crds/ differs from crds/: copy crds/sipsockets.io_sipsockets.yaml over it"
    )


def test_rendered_crd_is_the_source_crd_with_keep_policy() -> None:
    source = yaml.safe_load(CRD_SOURCE.read_text())
    crds = [
        c for c in rendered().of_kind("CustomResourceDefinition") if c["spec"]["group"] == "sipsockets.io"
    ]
    assert len(crds) == 1
    crd = crds[0]
    assert crd["spec"] == source["spec"]
    assert crd["metadata"]["name"] == source["metadata"]["name"] == "sipsockets.sipsockets.io"
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    for key, value in (source["metadata"].get("annotations") or {}).items():
        assert crd["metadata"]["annotations"][key] == value


def test_crd_can_be_skipped_or_left_deletable() -> None:
    off = rendered(OPTION_SETS["everythingOff"])
    assert not off.of_kind("CustomResourceDefinition")
    (crd,) = rendered({"crds": {"keep": False}}).of_kind("CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in (crd["metadata"].get("annotations") or {})
