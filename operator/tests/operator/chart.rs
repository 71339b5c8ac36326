//! Helm chart checks through helm-python-sdk (the real Helm library, no `helm` binary).
//!
//! `HELM_PYTHON` names the interpreter of the venv `scripts/helm-venv.sh` creates:
//! `HELM_PYTHON="$(bash scripts/helm-venv.sh)" cargo test -p operator chart`. Without it the
//! tests say they are skipped — except under CI (`CI=true`), where a missing interpreter fails.

use std::process::Command;

use serde_json::Value;

use crate::common::repo_root;

fn helm_python() -> Option<String> {
    match std::env::var("HELM_PYTHON").ok().filter(|p| !p.is_empty()) {
        Some(p) => Some(p),
        None if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") => {
            panic!("HELM_PYTHON is not set under CI: run `bash scripts/helm-venv.sh` and export its output")
        }
        None => {
            println!("skipped: HELM_PYTHON not set");
            None
        }
    }
}

const SCRIPT: &str = r#"
import json, sys
import helm_python
chart_dir, values = sys.argv[1], json.loads(sys.argv[2])
lint = helm_python.lint(chart_dir, values or None)
rendered = helm_python.Chart.load(chart_dir).render(values, name="appstrate-operator", namespace="appstrate-system")
print(json.dumps({"lint": lint, "rendered": rendered}))
"#;

/// Lint report and rendered manifests (template path → YAML) for `values`.
fn render(python: &str, values: Value) -> (Value, Vec<(String, Value)>) {
    let chart = repo_root().join("charts/appstrate-operator");
    let out = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(&chart)
        .arg(values.to_string())
        .output()
        .expect("HELM_PYTHON runs");
    assert!(
        out.status.success(),
        "helm-python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON from the helper");
    let mut docs = Vec::new();
    for (path, text) in v["rendered"].as_object().expect("rendered map") {
        if !path.ends_with(".yaml") {
            continue; // NOTES.txt
        }
        for doc in text.as_str().unwrap_or_default().split("\n---") {
            let parsed: Value = serde_yaml::from_str(doc)
                .unwrap_or_else(|e| panic!("{path} is not YAML: {e}\n{doc}"));
            if !parsed.is_null() {
                docs.push((path.clone(), parsed));
            }
        }
    }
    (v["lint"].clone(), docs)
}

fn kinds<'a>(docs: &'a [(String, Value)], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|(_, d)| d["kind"] == kind)
        .map(|(_, d)| d)
        .collect()
}

fn assert_lint_clean(lint: &Value) {
    let errors: Vec<&Value> = lint["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter(|m| m["severity"].as_i64() >= Some(3))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        errors.is_empty() && lint["errors"].as_array().is_none_or(Vec::is_empty),
        "helm lint: {lint}"
    );
}

#[test]
fn chart_lints_and_renders_the_crd_with_keep() {
    let Some(python) = helm_python() else { return };
    let (lint, docs) = render(&python, serde_json::json!({}));
    assert_lint_clean(&lint);
    let crds = kinds(&docs, "CustomResourceDefinition");
    assert_eq!(crds.len(), 1, "one CRD by default");
    assert_eq!(crds[0]["metadata"]["name"], "appstrates.appstrate.dev");
    assert_eq!(
        crds[0]["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    // The rendered CRD is the generated one.
    let generated: Value = serde_yaml::from_str(&operator::crd_yaml()).unwrap();
    assert_eq!(crds[0]["spec"], generated["spec"]);

    for kind in [
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
    ] {
        assert_eq!(kinds(&docs, kind).len(), 1, "{kind}");
    }
    let dep = kinds(&docs, "Deployment")[0];
    let pod = &dep["spec"]["template"];
    assert!(
        pod["metadata"]["annotations"]["checksum/rbac"].is_string(),
        "checksum annotation"
    );
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
}

#[test]
fn crds_install_false_renders_no_crd_and_keep_false_drops_the_annotation() {
    let Some(python) = helm_python() else { return };
    let (lint, docs) = render(&python, serde_json::json!({"crds": {"install": false}}));
    assert_lint_clean(&lint);
    assert!(kinds(&docs, "CustomResourceDefinition").is_empty());
    assert_eq!(
        kinds(&docs, "Deployment").len(),
        1,
        "the operator is still installed"
    );

    let (_, docs) = render(&python, serde_json::json!({"crds": {"keep": false}}));
    let crds = kinds(&docs, "CustomResourceDefinition");
    assert_eq!(crds.len(), 1);
    assert!(crds[0]["metadata"]["annotations"].is_null());
}

#[test]
fn cluster_role_is_least_privilege_without_wildcards() {
    let Some(python) = helm_python() else { return };
    let (_, docs) = render(&python, serde_json::json!({}));
    for role in kinds(&docs, "ClusterRole")
        .into_iter()
        .chain(kinds(&docs, "Role"))
    {
        let text = role.to_string();
        assert!(!text.contains("\"*\""), "wildcard in {text}");
    }
    let rules = kinds(&docs, "ClusterRole")[0]["rules"]
        .as_array()
        .unwrap()
        .clone();
    let find = |group: &str, resource: &str| -> Vec<String> {
        rules
            .iter()
            .filter(|r| {
                r["apiGroups"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|g| g == group)
                    && r["resources"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|x| x == resource)
            })
            .flat_map(|r| {
                r["verbs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
            })
            .collect()
    };
    assert_eq!(
        find("appstrate.dev", "appstrates"),
        ["get", "list", "watch", "patch", "update"]
    );
    assert_eq!(
        find("appstrate.dev", "appstrates/status"),
        ["get", "patch", "update"]
    );
    assert_eq!(find("appstrate.dev", "appstrates/finalizers"), ["update"]);
    let crud = [
        "get", "list", "watch", "create", "patch", "update", "delete",
    ];
    assert_eq!(find("apps", "deployments"), crud);
    assert_eq!(find("apps", "statefulsets"), crud);
    assert_eq!(find("networking.k8s.io", "networkpolicies"), crud);
    assert_eq!(find("apps", "replicasets"), ["get", "list"]);
    for r in ["services", "secrets", "persistentvolumeclaims"] {
        assert_eq!(find("", r), crud, "{r}");
    }
    assert_eq!(find("", "events"), ["create", "patch"]);
    assert_eq!(find("events.k8s.io", "events"), ["create", "patch"]);
    assert!(
        find("coordination.k8s.io", "leases").is_empty(),
        "leases live in the namespaced Role"
    );
    let role = kinds(&docs, "Role")[0];
    assert_eq!(
        role["rules"][0]["apiGroups"],
        serde_json::json!(["coordination.k8s.io"])
    );
    assert_eq!(
        role["rules"][0]["verbs"],
        serde_json::json!(["get", "create", "update"])
    );
}

/// Every value in values.yaml is documented by a `# --` comment (on itself or on the block it
/// belongs to), and the defaults are the ones SPEC §21 lists.
#[test]
fn every_value_is_documented_and_defaults_match_the_spec() {
    let text =
        std::fs::read_to_string(repo_root().join("charts/appstrate-operator/values.yaml")).unwrap();
    // (indent, documented) of the enclosing keys.
    let mut stack: Vec<(usize, bool)> = Vec::new();
    let mut previous_doc = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            continue;
        }
        if trimmed.starts_with('#') {
            previous_doc =
                trimmed.starts_with("# --") || (previous_doc && trimmed.starts_with('#'));
            continue;
        }
        let indent = line.len() - trimmed.len();
        if trimmed.starts_with("- ") {
            continue; // list items belong to their key
        }
        let Some((key, value)) = trimmed.split_once(':') else {
            continue;
        };
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        let inherited = stack.iter().any(|(_, d)| *d);
        let is_parent = value.trim().is_empty();
        assert!(
            previous_doc || inherited || is_parent,
            "values.yaml: `{key}` has no `# --` comment"
        );
        stack.push((indent, previous_doc || inherited));
        previous_doc = false;
    }

    let v: Value = serde_yaml::from_str(&text).unwrap();
    let expect = serde_json::json!({
        "image": {"repository": "appstrate-operator", "tag": "", "pullPolicy": "IfNotPresent"},
        "replicaCount": 1,
        "crds": {"install": true, "keep": true},
        "serviceAccount": {"create": true, "name": "", "annotations": {}},
        "rbac": {"create": true},
        "logLevel": "info",
        "logFormat": "json",
        "metrics": {"port": 8080},
        "requeue": {"notReadySeconds": 10, "readySeconds": 300},
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
        "podSecurityContext": {"runAsNonRoot": true, "runAsUser": 65532, "fsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"}},
        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]}},
        "nodeSelector": {}, "tolerations": [], "affinity": {}, "podAnnotations": {},
    });
    for (k, want) in expect.as_object().unwrap() {
        assert_eq!(&v[k], want, "values.yaml {k}");
    }
}

#[test]
fn requeue_intervals_reach_the_operator_environment() {
    let Some(python) = helm_python() else { return };
    let env_of = |values: Value| -> Vec<(String, String)> {
        let (lint, docs) = render(&python, values);
        assert_lint_clean(&lint);
        let dep = kinds(&docs, "Deployment")[0];
        dep["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["name"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("REQUEUE_")
            })
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_string(),
                    e["value"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let pair = |a: &str, b: &str| {
        vec![
            ("REQUEUE_NOT_READY_SECONDS".to_string(), a.to_string()),
            ("REQUEUE_READY_SECONDS".to_string(), b.to_string()),
        ]
    };
    assert_eq!(env_of(serde_json::json!({})), pair("10", "300"));
    assert_eq!(
        env_of(serde_json::json!({"requeue": {"notReadySeconds": 30, "readySeconds": 3600}})),
        pair("30", "3600")
    );
}
