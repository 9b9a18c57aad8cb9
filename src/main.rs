use std::process::ExitCode;

use clap::Parser;
use linkwatch::cli::{self, Cli};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    linkwatch::memory::one_arena();
    let cli = Cli::parse();
    cli::init_tracing(&cli);
    match cli::execute(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("linkwatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}
