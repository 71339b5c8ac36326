//! `fake-mcp-stdio`: a small MCP server on stdin/stdout for the MCP tests (issue 16). Its tools:
//! `echo`, `write_file` (into its working directory, or `FAKE_MCP_DIR`), and `credential_digest`
//! (length and SHA-256 of the variable `FAKE_MCP_CREDENTIAL_VAR`, default `API_TOKEN`, never the value).
//!
//! `--fail-start` exits at once with a message on stderr; `--hang` never answers (start timeout tests).

use rmcp::ServiceExt;
use test_support::fake_mcp::{FakeTools, DEFAULT_CREDENTIAL_VAR};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--fail-start") {
        eprintln!("fake-mcp-stdio: failing on purpose (--fail-start)");
        std::process::exit(3);
    }
    if args.iter().any(|a| a == "--hang") {
        std::future::pending::<()>().await;
    }
    let dir = std::env::var_os("FAKE_MCP_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(std::env::temp_dir);
    let var = std::env::var("FAKE_MCP_CREDENTIAL_VAR")
        .unwrap_or_else(|_| DEFAULT_CREDENTIAL_VAR.to_string());
    let server = match FakeTools::new(dir, var)
        .serve(rmcp::transport::stdio())
        .await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fake-mcp-stdio: initialize failed: {e}");
            std::process::exit(1);
        }
    };
    let _ = server.waiting().await;
}
