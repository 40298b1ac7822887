//! Helpers shared by the pipeline's unit tests.

use std::collections::BTreeMap;

use super::{format_problems, parse};

/// Parse `yaml`; `expect` is "ok" or the problems as `hoist validate` prints them.
#[track_caller]
pub(super) fn check(yaml: &str, expect: &str) {
    let actual = match parse(yaml) {
        Ok(_) => "ok".to_string(),
        Err(problems) => format_problems(".hoist.yml", &problems),
    };
    let expect: Vec<&str> = expect.trim().lines().map(str::trim).collect();
    let actual_lines: Vec<&str> = actual.trim().lines().collect();
    let shown: String = yaml.chars().take(2000).collect();
    assert_eq!(
        actual_lines, expect,
        "\n--- yaml\n{shown}\n--- got\n{actual}"
    );
}

/// A valid pipeline with one deploy step, `deploy_tail` appended under `deploy:`
/// (indented by 6), so each deploy rule can be checked alone. Deploy keys start on line 12.
pub(super) fn with_deploy(deploy_tail: &str) -> String {
    format!(
        "app: web\nsteps:\n  - name: image\n    build:\n      repository: r.example/acme/web\n  \
         - name: deploy\n    deploy:\n      image: image\n      hosts: [web1]\n      \
         container: {{name: web}}\n      health: {{tcp: 8080}}\n{deploy_tail}"
    )
}

pub(super) fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(super) fn strs(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}
