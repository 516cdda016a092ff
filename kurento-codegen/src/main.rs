//! `kurento-codegen`: writes the typed API for Kurento modules.
//!
//! - `kurento-codegen --builtin [--check]`: regenerates `kurento-client/src/generated/` from the
//!   vendored `kurento-client/kmd/*.kmd.json` (`--check` only reports whether it is up to date).
//! - `kurento-codegen --out DIR CORE... -- CUSTOM...`: generates code for custom modules (the files
//!   after `--`) on top of kurento-client, resolving types against the files before `--`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kurento_codegen::{generate, parse_module, Module, Target};

fn read(path: &Path) -> Result<Module, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_module(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn builtin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kurento-client")
}

fn run() -> Result<bool, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--builtin") {
        let check = args.iter().any(|a| a == "--check");
        let root = builtin_dir();
        let modules = ["core", "elements", "filters"]
            .iter()
            .map(|m| read(&root.join(format!("kmd/{m}.kmd.json"))))
            .collect::<Result<Vec<_>, _>>()?;
        let files = generate(&modules, &["core", "elements", "filters"], Target::Builtin)
            .map_err(|e| e.to_string())?;
        let out = root.join("src/generated");
        let mut stale = false;
        for f in files {
            let path = out.join(&f.name);
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current != f.contents {
                stale = true;
                if check {
                    eprintln!("out of date: {}", path.display());
                } else {
                    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
                    std::fs::write(&path, f.contents).map_err(|e| e.to_string())?;
                    eprintln!("wrote {}", path.display());
                }
            }
        }
        return Ok(!(check && stale));
    }
    let mut out = None;
    let mut base = Vec::new();
    let mut custom = Vec::new();
    let mut after_sep = false;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => out = it.next().map(PathBuf::from),
            "--" => after_sep = true,
            "-h" | "--help" => {
                eprintln!("usage: kurento-codegen --builtin [--check]\n       kurento-codegen --out DIR BASE.kmd.json... -- CUSTOM.kmd.json...");
                return Ok(true);
            }
            _ if after_sep => custom.push(PathBuf::from(a)),
            _ => base.push(PathBuf::from(a)),
        }
    }
    let out = out.ok_or("missing --out DIR")?;
    if custom.is_empty() {
        return Err("no custom module given (files after `--`)".into());
    }
    let mut modules = Vec::new();
    for p in base.iter().chain(custom.iter()) {
        modules.push(read(p)?);
    }
    let emit: Vec<String> = modules[base.len()..]
        .iter()
        .map(|m| m.name.clone())
        .collect();
    let emit: Vec<&str> = emit.iter().map(String::as_str).collect();
    let files = generate(&modules, &emit, Target::External).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    for f in files {
        std::fs::write(out.join(&f.name), f.contents).map_err(|e| e.to_string())?;
    }
    Ok(true)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("kurento-codegen: {e}");
            ExitCode::from(2)
        }
    }
}
