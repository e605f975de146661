//! The `browserfleet` command: one binary, one subcommand per role.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use browserfleet::api;

/// browserfleet runs fleets of browsers on EC2 instances for Chrome DevTools
/// Protocol clients, described by BrowserFleet and BrowserSession resources.
#[derive(Parser, Debug)]
#[command(
    name = "browserfleet",
    version,
    about,
    long_about,
    after_help = "Examples:\n  browserfleet crdgen                 write crds/*.yaml\n  browserfleet crdgen --check         fail if crds/ is stale\n  kubectl apply -f crds/              install the CRDs in a cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write the CustomResourceDefinitions generated from the Rust types.
    ///
    /// Writes one YAML file per resource (browserfleets.browserfleet.io.yaml,
    /// browsersessions.browserfleet.io.yaml) into the output directory. With
    /// --check nothing is written; the command fails when a file differs.
    Crdgen {
        /// Directory the CRD files are written to.
        #[arg(long, default_value = "crds")]
        out_dir: PathBuf,
        /// Compare instead of writing; exit with status 1 when a file is
        /// missing or differs.
        #[arg(long)]
        check: bool,
    },
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen { out_dir, check } => crdgen(&out_dir, check),
    }
}

fn crdgen(out_dir: &Path, check: bool) -> anyhow::Result<ExitCode> {
    let manifests = api::crd_manifests().context("rendering the CRDs as YAML")?;
    if check {
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
