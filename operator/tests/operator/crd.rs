//! The committed CRD and the chart's copy are exactly what `crdgen` prints.

use crate::common::repo_root;

#[test]
fn committed_crd_matches_crdgen_output() {
    let committed =
        std::fs::read_to_string(repo_root().join(operator::CRD_PATH)).expect("CRD file exists");
    assert!(
        committed == operator::crd_yaml(),
        "{} is stale: run `cargo run -p operator --bin crdgen -- --write`",
        operator::CRD_PATH
    );
    for needle in [
        "- appst\n",
        "name: Tier\n",
        "name: Phase\n",
        "jsonPath: .status.conditions[?(@.type==\"Ready\")].status\n",
        "name: Age\n",
        "status: {}\n",
    ] {
        assert!(committed.contains(needle), "CRD lacks {needle:?}");
    }
}

#[test]
fn chart_crd_is_the_crd_behind_helm_lines() {
    let template = std::fs::read_to_string(repo_root().join(operator::CHART_CRD_PATH))
        .expect("chart CRD exists");
    assert!(
        operator::strip_helm_lines(&template) == operator::crd_yaml(),
        "{} differs from crdgen output: run `cargo run -p operator --bin crdgen -- --write`",
        operator::CHART_CRD_PATH
    );
    assert!(template.starts_with("{{- if .Values.crds.install }}\n"));
    assert!(template.contains("helm.sh/resource-policy: keep"));
    assert!(template.trim_end().ends_with("{{- end }}"));
}

#[test]
fn crd_carries_the_cel_rules() {
    let crd = operator::crd_yaml();
    for rule in [
        "has(self.managed) != has(self.external)",
        "self.tier < 1 || has(self.postgres)",
        "self.runAdapter != ''docker'' || self.tier == 3",
        "self.matches('^https://",
    ] {
        assert!(crd.contains(rule), "missing CEL rule {rule:?}");
    }
}
