//! What the simulator knows of Kurento's classes, read from the same module definitions the client
//! is generated from: hierarchy, events, operations and property types.

use std::collections::HashMap;

use kurento_codegen::model::{parse_module, Module, RemoteClass};
use serde_json::{json, Value};

const SOURCES: &[(&str, &str)] = &[
    (
        "core",
        include_str!("../../kurento-client/kmd/core.kmd.json"),
    ),
    (
        "elements",
        include_str!("../../kurento-client/kmd/elements.kmd.json"),
    ),
    (
        "filters",
        include_str!("../../kurento-client/kmd/filters.kmd.json"),
    ),
];

/// Class metadata.
pub struct Kmd {
    modules: Vec<Module>,
    classes: HashMap<String, RemoteClass>,
}

impl Kmd {
    /// Loads the vendored core, elements and filters modules.
    pub fn builtin() -> Self {
        let modules: Vec<Module> = SOURCES
            .iter()
            .map(|(_, text)| parse_module(text).expect("vendored kmd parses"))
            .collect();
        let classes = modules
            .iter()
            .flat_map(|m| m.remote_classes.iter())
            .map(|c| (c.name.clone(), c.clone()))
            .collect();
        Kmd { modules, classes }
    }

    fn chain(&self, ty: &str) -> Vec<&RemoteClass> {
        let mut out = Vec::new();
        let mut cur = self.classes.get(ty);
        while let Some(c) = cur {
            out.push(c);
            cur = c.extends.as_ref().and_then(|p| self.classes.get(p));
            if out.len() > 32 {
                break;
            }
        }
        out
    }

    /// Qualified ancestors, nearest first (what `describe` answers as `hierarchy`).
    pub fn hierarchy(&self, ty: &str) -> Vec<String> {
        self.chain(ty)
            .iter()
            .skip(1)
            .map(|c| format!("kurento.{}", c.name))
            .collect()
    }

    /// True when `ty` is `class` or a subclass.
    pub fn is_a(&self, ty: &str, class: &str) -> bool {
        self.chain(ty).iter().any(|c| c.name == class)
    }

    /// True when objects of `ty` can raise `event`.
    pub fn emits(&self, ty: &str, event: &str) -> bool {
        self.chain(ty)
            .iter()
            .any(|c| c.events.iter().any(|e| e == event))
    }

    /// True for non-abstract classes with a constructor.
    pub fn creatable(&self, ty: &str) -> bool {
        self.classes
            .get(ty)
            .is_some_and(|c| !c.is_abstract && c.constructor.is_some())
    }

    /// True when `op` is a method or property accessor of `ty` or its ancestors.
    pub fn has_operation(&self, ty: &str, op: &str) -> bool {
        self.chain(ty).iter().any(|c| {
            c.methods.iter().any(|m| m.name == op)
                || c.properties.iter().any(|p| {
                    let cap = capitalize(&p.name);
                    op == format!("get{cap}")
                        || (!p.read_only && !p.is_final && op == format!("set{cap}"))
                })
        }) || op == "getChilds"
    }

    /// The type of the property read by `getter` (`getFoo` → type of `foo`).
    pub fn property_type(&self, ty: &str, getter: &str) -> Option<String> {
        let name = getter.strip_prefix("get")?;
        self.chain(ty).iter().find_map(|c| {
            c.properties
                .iter()
                .find(|p| capitalize(&p.name) == name)
                .map(|p| p.ty.clone())
        })
    }

    /// `ServerInfo.modules`.
    pub fn modules_info(&self) -> Value {
        Value::Array(
            self.modules
                .iter()
                .map(|m| {
                    let factories: Vec<&str> = m
                        .remote_classes
                        .iter()
                        .filter(|c| !c.is_abstract && c.constructor.is_some())
                        .map(|c| c.name.as_str())
                        .collect();
                    json!({"__module__": "kurento", "__type__": "ModuleInfo", "name": m.name,
                        "version": m.version, "generationTime": "kms-sim", "factories": factories})
                })
                .collect(),
        )
    }

    /// The module definition text (`getKmd`).
    pub fn source(&self, module: &str) -> Option<&'static str> {
        SOURCES.iter().find(|(n, _)| *n == module).map(|(_, t)| *t)
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_the_class_tree() {
        let k = Kmd::builtin();
        assert!(k.is_a("WebRtcEndpoint", "SdpEndpoint"));
        assert!(k.emits("WebRtcEndpoint", "IceCandidateFound"));
        assert!(k.emits("RtpEndpoint", "ElementConnected"));
        assert!(!k.emits("RtpEndpoint", "IceCandidateFound"));
        assert!(k.creatable("RtpEndpoint") && !k.creatable("MediaElement"));
        assert!(k.has_operation("RtpEndpoint", "processOffer"));
        assert!(
            k.has_operation("MediaPipeline", "getName")
                && k.has_operation("MediaPipeline", "setName")
        );
        assert!(!k.has_operation("RtpEndpoint", "getNotExisting"));
        assert_eq!(k.hierarchy("MediaPipeline"), vec!["kurento.MediaObject"]);
    }
}
