//! `browserfleet crdgen`: the CRD YAML from the Rust types in `api/`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::api;

#[derive(clap::Args, Debug)]
pub(super) struct CrdgenArgs {
    /// Directory the CRD files are written to.
    #[arg(long, default_value = "crds")]
    out_dir: PathBuf,
    /// Compare instead of writing; exit with status 1 when a file is missing
    /// or differs.
    #[arg(long)]
    check: bool,
}

pub(super) fn run(args: &CrdgenArgs) -> anyhow::Result<ExitCode> {
    let out_dir = &args.out_dir;
    let manifests = api::crd_manifests().context("rendering the CRDs as YAML")?;
    if args.check {
        let mut stale = Vec::new();
        for manifest in &manifests {
            let path = out_dir.join(&manifest.file_name);
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current != manifest.yaml {
                stale.push(path.display().to_string());
            }
        }
        if stale.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!(
            "out of date (run `browserfleet crdgen`): {}",
            stale.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    for manifest in &manifests {
        let path = out_dir.join(&manifest.file_name);
        std::fs::write(&path, &manifest.yaml)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
