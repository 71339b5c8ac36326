//! Prints the `Appstrate` CRD as YAML.
//!
//! `cargo run -p operator --bin crdgen > crds/appstrate.dev_appstrates.yaml`, or `--write` to
//! refresh both the CRD file and the Helm chart's copy from the repository root.

fn main() -> std::io::Result<()> {
    if std::env::args().any(|a| a == "--write") {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        std::fs::write(root.join(operator::CRD_PATH), operator::crd_yaml())?;
        std::fs::write(
            root.join(operator::CHART_CRD_PATH),
            operator::chart_crd_template(),
        )?;
        eprintln!(
            "wrote {} and {}",
            operator::CRD_PATH,
            operator::CHART_CRD_PATH
        );
    } else {
        print!("{}", operator::crd_yaml());
    }
    Ok(())
}
