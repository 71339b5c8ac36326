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

mod cel {
    //! The CRD's CEL rules, evaluated client-side (kube-cel) the way the API server would, and
    //! checked against the pure `validate()` so the two never disagree.

    use kube::core::cel::{compile_schema, validate_cel};
    use kube::CustomResourceExt;
    use operator::validate::validate;
    use operator::Appstrate;
    use serde_json::{json, Value};

    use crate::common::example;

    fn schema() -> Value {
        let crd = Appstrate::crd();
        serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("schema"),
        )
        .unwrap()
    }

    /// The example with `patch` merged into its spec.
    fn with(tier: u8, patch: Value) -> Appstrate {
        let mut v = serde_json::to_value(example(tier)).unwrap();
        json_merge(&mut v["spec"], &patch);
        serde_json::from_value(v).expect("still deserializes")
    }

    fn json_merge(target: &mut Value, patch: &Value) {
        match (target, patch) {
            (Value::Object(t), Value::Object(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        json_merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
            (t, p) => *t = p.clone(),
        }
    }

    #[test]
    fn every_rule_compiles() {
        let compiled = compile_schema(&schema());
        assert!(
            !compiled.has_errors(),
            "{:?}",
            compiled.compilation_errors()
        );
    }

    /// Every schema node that carries CEL rules, with its rules.
    fn rule_sites(node: &Value, out: &mut Vec<(Value, String)>) {
        if let Some(rules) = node["x-kubernetes-validations"].as_array() {
            for r in rules {
                out.push((
                    node.clone(),
                    r["rule"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
        if let Some(props) = node["properties"].as_object() {
            for p in props.values() {
                rule_sites(p, out);
            }
        }
        if node["items"].is_object() {
            rule_sites(&node["items"], out);
        }
    }

    #[test]
    fn rules_stay_within_the_api_server_cost_budget_and_scope() {
        use kube::core::cel::{analyze_rule, ScopeContext, WarningKind};
        let mut sites = Vec::new();
        rule_sites(&schema(), &mut sites);
        assert!(sites.len() >= 9, "found {} rules", sites.len());
        for (node, rule) in sites {
            let warnings = analyze_rule(&rule, &compile_schema(&node), ScopeContext::CrdValidation);
            let serious: Vec<_> = warnings
                .iter()
                .filter(|w| matches!(w.kind, WarningKind::CostExceeded | WarningKind::WrongScope))
                .collect();
            assert!(serious.is_empty(), "{rule}: {serious:?}");
        }
    }

    #[test]
    fn examples_pass_the_api_server_rules() {
        for tier in 0..=3 {
            validate_cel(&example(tier)).unwrap_or_else(|e| panic!("tier {tier}: {e:?}"));
        }
    }

    #[test]
    fn bad_resources_are_refused_with_a_clear_message_by_both_layers() {
        let cases: Vec<(Appstrate, &str, &str)> = vec![
            (
                with(0, json!({"runAdapter": "docker"})),
                "docker requires tier 3",
                "spec.runAdapter",
            ),
            (
                with(1, json!({"postgres": null})),
                "spec.postgres is required",
                "spec.postgres",
            ),
            (
                with(2, json!({"redis": null})),
                "spec.redis is required",
                "spec.redis",
            ),
            (
                with(
                    1,
                    json!({"postgres": {"external": {"secretRef": {"name": "db"}}}}),
                ),
                "exactly one of managed or external",
                "spec.postgres",
            ),
            (
                with(3, json!({"storage": null, "runAdapter": "process"})),
                "tier 3 requires spec.storage",
                "spec.storage",
            ),
            (
                with(2, json!({"replicas": 3})),
                "spec.replicas > 1 requires",
                "spec.replicas",
            ),
            (
                with(0, json!({"appUrl": "http://x.example"})),
                "spec.appUrl must be",
                "spec.appUrl",
            ),
            (
                with(0, json!({"appUrl": "appstrate.example.com"})),
                "spec.appUrl must be",
                "spec.appUrl",
            ),
        ];
        for (app, cel_message, field) in cases {
            let errors = validate_cel(&app).expect_err(&format!("CEL accepts {:?}", app.spec));
            let text = format!("{errors:?}");
            assert!(
                text.contains(cel_message),
                "expected {cel_message:?} in {text}"
            );
            let invalid = validate(&app.spec).expect_err("validate() accepts what CEL refuses");
            assert!(
                invalid.0.iter().any(|v| v.field == field),
                "{field} not named in {invalid}"
            );
        }
    }

    #[test]
    fn allowed_variants_pass_both_layers() {
        let cases = vec![
            with(0, json!({"appUrl": "http://localhost:3000"})),
            with(0, json!({"appUrl": "http://127.0.0.1"})),
            with(1, json!({"replicas": 5})),
            with(
                2,
                json!({"replicas": 3, "dataVolume": {"accessMode": "ReadWriteMany"}}),
            ),
            with(3, json!({"storage": null, "replicas": 1})),
            with(3, json!({"runAdapter": "process"})),
        ];
        for app in cases {
            validate_cel(&app).unwrap_or_else(|e| panic!("CEL refuses {:?}: {e:?}", app.spec));
            validate(&app.spec)
                .unwrap_or_else(|e| panic!("validate() refuses {:?}: {e}", app.spec));
        }
    }

    #[test]
    fn names_that_cannot_name_children_are_refused_by_both_layers() {
        use operator::validate::validate_resource;
        for bad in [
            "a".repeat(44),
            "my.appstrate".to_string(),
            "2appstrate".to_string(),
        ] {
            let mut app = example(0);
            app.metadata.name = Some(bad.clone());
            let errors = validate_cel(&app).expect_err(&format!("CEL accepts name {bad:?}"));
            let text = format!("{errors:?}");
            assert!(
                text.contains("metadata.name must be a DNS-1035 label of at most 43 characters"),
                "{text}"
            );
            let invalid = validate_resource(&app).expect_err("validate_resource() accepts it");
            assert_eq!(invalid.0[0].field, "metadata.name", "{invalid}");
        }
        let mut app = example(0);
        app.metadata.name = Some("a".repeat(43));
        validate_cel(&app).expect("43 characters fit");
        validate_resource(&app).expect("43 characters fit");
    }

    #[test]
    fn extra_env_is_a_list_map_by_name_without_operator_variables() {
        let crd = operator::crd_yaml();
        let at = crd.find("extraEnv:").expect("extraEnv in the CRD");
        let section = &crd[at..at + crd[at..].find("\n              image").unwrap_or(4000)];
        assert!(section.contains("x-kubernetes-list-type: map"), "{section}");
        assert!(
            section.contains("x-kubernetes-list-map-keys:\n                - name"),
            "{section}"
        );

        let ok = with(
            0,
            json!({"extraEnv": [{"name": "FEATURE_X", "value": "1"}]}),
        );
        validate_cel(&ok).expect("a free name passes");
        validate(&ok.spec).expect("a free name passes");
        for reserved in [
            "DATABASE_URL",
            "S3_BUCKET",
            "BETTER_AUTH_SECRET",
            "PORT",
            "SIDECAR_POOL_SIZE",
            "RUN_SLOT_POOL_SIZE",
        ] {
            let app = with(0, json!({"extraEnv": [{"name": reserved, "value": "x"}]}));
            let text = format!("{:?}", validate_cel(&app).expect_err(reserved));
            assert!(
                text.contains("set by the operator and cannot be overridden"),
                "{text}"
            );
            let invalid = validate(&app.spec).expect_err(reserved);
            assert!(invalid.to_string().contains(reserved), "{invalid}");
        }
    }

    #[test]
    fn a_refused_volume_growth_can_be_taken_back_but_statefulset_volumes_never_change() {
        use kube::core::cel::validate_cel_update;
        let old = with(2, json!({"dataVolume": {"size": "2Gi"}}));
        let grown = with(2, json!({"dataVolume": {"size": "3000Mi"}}));
        validate_cel_update(&grown, &old).expect("the data volume may grow");
        // Going back below the last accepted spec is the API server's to allow: only the
        // operator sees the live claim, and refuses a size below it (mocked_apply.rs).
        let back = with(2, json!({"dataVolume": {"size": "1500Mi"}}));
        validate_cel_update(&back, &grown).expect("a refused growth can be taken back");

        let resized = with(2, json!({"postgres": {"managed": {"storage": "50Gi"}}}));
        let text = format!(
            "{:?}",
            validate_cel_update(&resized, &old).expect_err("resize")
        );
        assert!(
            text.contains("spec.postgres.managed.storage is immutable"),
            "{text}"
        );
        let text = format!(
            "{:?}",
            validate_cel_update(
                &with(2, json!({"redis": {"managed": {"storage": "9Gi"}}})),
                &old
            )
            .expect_err("resize")
        );
        assert!(
            text.contains("spec.redis.managed.storage is immutable"),
            "{text}"
        );
        // Unchanged resources pass the transition rules.
        for tier in 0..=3 {
            validate_cel_update(&example(tier), &example(tier))
                .unwrap_or_else(|e| panic!("tier {tier}: {e:?}"));
        }
    }
}
