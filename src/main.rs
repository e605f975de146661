//! The `browserfleet` command: one binary, one subcommand per role
//! (`browserfleet::commands`).

fn main() -> anyhow::Result<std::process::ExitCode> {
    browserfleet::commands::run()
}
