//! The Kurento module definition format (`.kmd.json`), as far as the generator needs it, and a reader
//! that accepts the lenient JSON of Kurento's source tree.

use serde::Deserialize;

/// One module definition file.
#[derive(Debug, Clone, Deserialize)]
pub struct Module {
    /// Module name (`core`, `elements`, `filters`, or a custom module's).
    pub name: String,
    /// Module version.
    #[serde(default)]
    pub version: String,
    /// Remote classes.
    #[serde(default, rename = "remoteClasses")]
    pub remote_classes: Vec<RemoteClass>,
    /// Enums and structs.
    #[serde(default, rename = "complexTypes")]
    pub complex_types: Vec<ComplexType>,
    /// Events.
    #[serde(default)]
    pub events: Vec<EventDef>,
    /// Implementation details; `cppNamespace` is the prefix used in object ids.
    #[serde(default)]
    pub code: Option<serde_json::Value>,
}

impl Module {
    /// The namespace KMS writes into object ids and qualified types (`kurento` for the core modules).
    pub fn id_namespace(&self) -> String {
        self.code
            .as_ref()
            .and_then(|c| c.pointer("/implementation/cppNamespace"))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| self.name.clone())
    }
}

/// A remote class.
#[derive(Debug, Clone, Deserialize)]
pub struct RemoteClass {
    /// Class name.
    pub name: String,
    /// Documentation.
    #[serde(default)]
    pub doc: String,
    /// Parent class.
    #[serde(default)]
    pub extends: Option<String>,
    /// Abstract classes cannot be created.
    #[serde(default, rename = "abstract")]
    pub is_abstract: bool,
    /// Constructor.
    #[serde(default)]
    pub constructor: Option<Constructor>,
    /// Properties (read with `get<Name>`, written with `set<Name>`).
    #[serde(default)]
    pub properties: Vec<Property>,
    /// Methods.
    #[serde(default)]
    pub methods: Vec<Method>,
    /// Names of events this class emits.
    #[serde(default)]
    pub events: Vec<String>,
}

/// A constructor.
#[derive(Debug, Clone, Deserialize)]
pub struct Constructor {
    /// Parameters.
    #[serde(default)]
    pub params: Vec<Param>,
    /// Documentation.
    #[serde(default)]
    pub doc: String,
}

/// A parameter.
#[derive(Debug, Clone, Deserialize)]
pub struct Param {
    /// Name on the wire.
    pub name: String,
    /// Type.
    #[serde(rename = "type")]
    pub ty: String,
    /// Documentation.
    #[serde(default)]
    pub doc: String,
    /// May be left out.
    #[serde(default)]
    pub optional: bool,
}

/// A property.
#[derive(Debug, Clone, Deserialize)]
pub struct Property {
    /// Name.
    pub name: String,
    /// Type.
    #[serde(rename = "type")]
    pub ty: String,
    /// Documentation.
    #[serde(default)]
    pub doc: String,
    /// No setter.
    #[serde(default, rename = "readOnly")]
    pub read_only: bool,
    /// Set at construction only.
    #[serde(default, rename = "final")]
    pub is_final: bool,
    /// May be absent (complex types).
    #[serde(default)]
    pub optional: bool,
}

/// A method.
#[derive(Debug, Clone, Deserialize)]
pub struct Method {
    /// Name.
    pub name: String,
    /// Documentation.
    #[serde(default)]
    pub doc: String,
    /// Parameters.
    #[serde(default)]
    pub params: Vec<Param>,
    /// Return type (absent for void).
    #[serde(default, rename = "return")]
    pub ret: Option<Return>,
}

/// A return type.
#[derive(Debug, Clone, Deserialize)]
pub struct Return {
    /// Type.
    #[serde(rename = "type")]
    pub ty: String,
    /// Documentation.
    #[serde(default)]
    pub doc: String,
}

/// An enum or a struct.
#[derive(Debug, Clone, Deserialize)]
pub struct ComplexType {
    /// Name.
    pub name: String,
    /// `ENUM` or `REGISTER`.
    #[serde(rename = "typeFormat")]
    pub type_format: String,
    /// Documentation.
    #[serde(default)]
    pub doc: String,
    /// Enum values.
    #[serde(default)]
    pub values: Vec<String>,
    /// Struct fields.
    #[serde(default)]
    pub properties: Vec<Property>,
    /// Parent struct.
    #[serde(default)]
    pub extends: Option<String>,
}

/// An event.
#[derive(Debug, Clone, Deserialize)]
pub struct EventDef {
    /// Name.
    pub name: String,
    /// Documentation.
    #[serde(default)]
    pub doc: String,
    /// Parent event.
    #[serde(default)]
    pub extends: Option<String>,
    /// Fields.
    #[serde(default)]
    pub properties: Vec<Property>,
}

/// Errors reading a module definition.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Not JSON even after the lenient clean-up.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

/// Parses a `.kmd.json` text. Accepts what Kurento's source tree contains besides strict JSON:
/// `//` and `/* */` comments outside strings, and raw control characters (newlines, tabs) inside
/// strings.
pub fn parse_module(text: &str) -> Result<Module, ReadError> {
    let cleaned = clean_lenient_json(text);
    Ok(serde_json::from_str(&cleaned)?)
}

/// Rewrites lenient JSON into strict JSON (comments removed, control characters escaped).
pub fn clean_lenient_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            match c {
                '\\' => {
                    out.push(c);
                    if let Some(n) = chars.next() {
                        out.push(n);
                    }
                }
                '"' => {
                    in_string = false;
                    out.push(c);
                }
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '/' if chars.peek() == Some(&'/') => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                for n in chars.by_ref() {
                    if prev == '*' && n == '/' {
                        break;
                    }
                    prev = n;
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_json_is_accepted() {
        let text = "{\n  // a comment\n  \"name\": \"x\", /* block */\n  \"remoteClasses\": [{\"name\": \"A\", \"doc\": \"line one\nline\ttwo // not a comment\"}]\n}";
        let m = parse_module(text).expect("lenient module parses");
        assert_eq!(m.name, "x");
        assert_eq!(
            m.remote_classes[0].doc,
            "line one\nline\ttwo // not a comment"
        );
    }

    #[test]
    fn strict_json_is_unchanged() {
        let text = r#"{"name":"core","doc":"a \"quoted\" \\ path // here"}"#;
        assert_eq!(clean_lenient_json(text), text);
    }
}
