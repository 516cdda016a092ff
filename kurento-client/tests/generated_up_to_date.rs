//! The committed generated API must be exactly what kurento-codegen makes of the vendored `.kmd.json`
//! files (regenerate with `cargo run -p kurento-codegen -- --builtin`).

use std::path::Path;

#[test]
fn generated_code_matches_the_module_definitions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let modules: Vec<_> = ["core", "elements", "filters"]
        .iter()
        .map(|m| {
            let text = std::fs::read_to_string(root.join(format!("kmd/{m}.kmd.json"))).unwrap();
            kurento_codegen::parse_module(&text).unwrap()
        })
        .collect();
    let files = kurento_codegen::generate(
        &modules,
        &["core", "elements", "filters"],
        kurento_codegen::Target::Builtin,
    )
    .unwrap();
    assert_eq!(files.len(), 4);
    for f in files {
        let committed =
            std::fs::read_to_string(root.join("src/generated").join(&f.name)).unwrap_or_default();
        assert!(
            committed == f.contents,
            "src/generated/{} is out of date: run `cargo run -p kurento-codegen -- --builtin`",
            f.name
        );
    }
}

#[test]
fn every_remote_class_is_generated() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for m in ["core", "elements", "filters"] {
        let text = std::fs::read_to_string(root.join(format!("kmd/{m}.kmd.json"))).unwrap();
        let module = kurento_codegen::parse_module(&text).unwrap();
        let code = std::fs::read_to_string(root.join(format!("src/generated/kms_{m}.rs"))).unwrap();
        for c in &module.remote_classes {
            assert!(
                code.contains(&format!("pub struct {}(rt::ObjectRef);", c.name)),
                "{}",
                c.name
            );
            assert!(
                code.contains(&format!("pub trait {}Methods", c.name)),
                "{}",
                c.name
            );
            assert!(
                code.contains(&format!("pub trait {}TxMethods", c.name)),
                "{}",
                c.name
            );
        }
        for e in &module.events {
            let ident = kurento_codegen::event_ident(&e.name);
            assert!(
                code.contains(&format!("const NAME: &'static str = {:?};", e.name)),
                "{ident}"
            );
        }
    }
}
