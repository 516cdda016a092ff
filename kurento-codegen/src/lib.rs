//! Generates kurento-client's typed API from Kurento module definitions (`.kmd.json`).
//!
//! For every module it writes one Rust file with:
//! - enums (`ENUM` complex types) with a forward-compatible `Unknown` variant;
//! - structs (`REGISTER` complex types), flattened along `extends`, with the fields of subtypes kept in
//!   `extra` where a type is extended (polymorphic `Stats`);
//! - event structs implementing `Event`, and `Emits` markers for every class that can emit them;
//! - one handle type per remote class, a `<Class>Methods` trait with its methods and property
//!   accessors (implemented for the class and its subclasses), `IsA` upcasts, and a builder for
//!   classes with a constructor (`PipelineElement` where the pipeline is the only required argument);
//! - a `<Class>TxMethods` trait with the same operations and accessors as calls added to a
//!   transaction (`tx.on(&object).process_offer(sdp)`), implemented for `TxCall<'_, T>` whenever
//!   `T: IsA<Class>`; object parameters take `impl TxArg<Class>` (an object or a `TxRef`), and each
//!   call returns a `TxResult<Return>` decoded like the direct call's answer.
//!
//! The output is deterministic; kurento-client checks its committed copy against it in a test.

pub mod model;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

pub use model::{parse_module, Module};
use model::{ComplexType, EventDef, Param, RemoteClass};

/// How the generated code refers to the client crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Inside kurento-client itself (the built-in core/elements/filters modules).
    Builtin,
    /// In a user's crate, for a custom module, on top of kurento-client.
    External,
}

/// A generated file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    /// File name, e.g. `kms_core.rs`.
    pub name: String,
    /// Contents.
    pub contents: String,
}

/// Generation failed: the definitions refer to something they do not define.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// A type name no module defines.
    #[error("{context}: unknown type `{ty}`")]
    UnknownType {
        /// Where it was used.
        context: String,
        /// The type.
        ty: String,
    },
    /// A parent class, struct or event no module defines.
    #[error("{0} extends an unknown parent")]
    UnknownParent(String),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Enum,
    Struct,
    Class,
}

struct Index<'a> {
    kinds: HashMap<&'a str, Kind>,
    classes: HashMap<&'a str, &'a RemoteClass>,
    structs: HashMap<&'a str, &'a ComplexType>,
    events: HashMap<&'a str, &'a EventDef>,
    /// Structs that others extend.
    extended: BTreeSet<&'a str>,
    /// Class -> all subclasses (including itself), over every module.
    subclasses: BTreeMap<&'a str, BTreeSet<&'a str>>,
    /// Option struct names already used, to keep them unique.
    option_names: std::cell::RefCell<BTreeSet<String>>,
}

impl<'a> Index<'a> {
    fn new(modules: &'a [Module]) -> Result<Self, GenError> {
        let mut kinds = HashMap::new();
        let mut classes = HashMap::new();
        let mut structs = HashMap::new();
        let mut events = HashMap::new();
        let mut extended = BTreeSet::new();
        for m in modules {
            for c in &m.remote_classes {
                kinds.insert(c.name.as_str(), Kind::Class);
                classes.insert(c.name.as_str(), c);
            }
            for t in &m.complex_types {
                if t.type_format == "ENUM" {
                    kinds.insert(t.name.as_str(), Kind::Enum);
                } else {
                    kinds.insert(t.name.as_str(), Kind::Struct);
                    structs.insert(t.name.as_str(), t);
                    if let Some(p) = &t.extends {
                        extended.insert(p.as_str());
                    }
                }
            }
            for e in &m.events {
                events.insert(e.name.as_str(), e);
            }
        }
        let mut subclasses: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for c in classes.values() {
            let mut cur = Some(c.name.as_str());
            let mut guard = 0;
            while let Some(name) = cur {
                subclasses.entry(name).or_default().insert(c.name.as_str());
                let class = classes
                    .get(name)
                    .ok_or_else(|| GenError::UnknownParent(c.name.clone()))?;
                cur = class.extends.as_deref();
                guard += 1;
                if guard > 64 {
                    return Err(GenError::UnknownParent(c.name.clone()));
                }
            }
        }
        Ok(Index {
            kinds,
            classes,
            structs,
            events,
            extended,
            subclasses,
            option_names: Default::default(),
        })
    }

    fn ancestors(&self, class: &'a str) -> Vec<&'a RemoteClass> {
        let mut out = Vec::new();
        let mut cur = self.classes.get(class).and_then(|c| c.extends.as_deref());
        while let Some(name) = cur {
            match self.classes.get(name) {
                Some(c) => {
                    out.push(*c);
                    cur = c.extends.as_deref();
                }
                None => break,
            }
        }
        out
    }
}

/// Where a type appears: decides borrowed or owned forms.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pos {
    Param,
    Owned,
    Field,
}

fn scalar(ty: &str) -> Option<&'static str> {
    Some(match ty {
        "String" => "String",
        "boolean" => "bool",
        "int" => "i32",
        "int64" => "i64",
        "float" => "f32",
        "double" => "f64",
        _ => return None,
    })
}

fn rust_type(idx: &Index, ty: &str, pos: Pos, context: &str) -> Result<String, GenError> {
    if let Some(inner) = ty.strip_suffix("[]") {
        let t = rust_type(idx, inner, Pos::Owned, context)?;
        let t = if idx.kinds.get(inner) == Some(&Kind::Class) && pos == Pos::Field {
            "String".to_owned()
        } else {
            t
        };
        return Ok(match pos {
            Pos::Param => format!("&[{t}]"),
            _ => format!("Vec<{t}>"),
        });
    }
    if let Some(inner) = ty.strip_suffix("<>") {
        let t = rust_type(idx, inner, Pos::Owned, context)?;
        return Ok(match pos {
            Pos::Param => format!("&std::collections::HashMap<String, {t}>"),
            _ => format!("std::collections::HashMap<String, {t}>"),
        });
    }
    if let Some(s) = scalar(ty) {
        return Ok(match (s, pos) {
            ("String", Pos::Param) => "&str".to_owned(),
            _ => s.to_owned(),
        });
    }
    match idx.kinds.get(ty) {
        Some(Kind::Enum) => Ok(ty.to_owned()),
        Some(Kind::Struct) => Ok(match pos {
            Pos::Param => format!("&{ty}"),
            _ => ty.to_owned(),
        }),
        Some(Kind::Class) => Ok(match pos {
            Pos::Param => format!("&impl rt::IsA<{ty}>"),
            Pos::Owned => ty.to_owned(),
            Pos::Field => "String".to_owned(),
        }),
        None => Err(GenError::UnknownType {
            context: context.to_owned(),
            ty: ty.to_owned(),
        }),
    }
}

fn is_class(idx: &Index, ty: &str) -> bool {
    idx.kinds.get(ty) == Some(&Kind::Class)
}

/// How to put a parameter into `Params`.
fn put_expr(idx: &Index, p: &Param, var: &str) -> String {
    let ty = p.ty.as_str();
    if let Some(inner) = ty.strip_suffix("[]") {
        if is_class(idx, inner) {
            return format!(".put_objects({:?}, {var})", p.name);
        }
    }
    if is_class(idx, ty) {
        return format!(".put_object({:?}, &{var}.upcast())", p.name);
    }
    if scalar(ty).is_some_and(|s| s != "String") || idx.kinds.get(ty) == Some(&Kind::Enum) {
        return format!(".put({:?}, &{var})", p.name);
    }
    format!(".put({:?}, {var})", p.name)
}

/// How to put a parameter into `Params` inside a transaction: object parameters may be objects the
/// transaction creates (`TxArg`).
fn tx_put_expr(idx: &Index, p: &Param, var: &str) -> String {
    if is_class(idx, &p.ty) {
        return format!(".put_tx_object({:?}, {var})", p.name);
    }
    put_expr(idx, p, var)
}

/// The parameter type of a transaction call: as outside transactions, except that an object may
/// also be one the transaction creates.
fn tx_param_type(idx: &Index, ty: &str, context: &str) -> Result<String, GenError> {
    if is_class(idx, ty) {
        return Ok(format!("impl rt::TxArg<{ty}>"));
    }
    rust_type(idx, ty, Pos::Param, context)
}

fn decoder(idx: &Index, ty: Option<&str>) -> String {
    match ty {
        None => "rt::decode::unit".to_owned(),
        Some(t) => {
            if let Some(inner) = t.strip_suffix("[]") {
                if is_class(idx, inner) {
                    return format!("rt::decode::objects::<{inner}>");
                }
            }
            if is_class(idx, t) {
                return format!("rt::decode::object::<{t}>");
            }
            "rt::decode::value".to_owned()
        }
    }
}

const KEYWORDS: &[&str] = &[
    "as", "break", "const", "continue", "crate", "else", "enum", "extern", "false", "fn", "for",
    "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return",
    "self", "Self", "static", "struct", "super", "trait", "true", "type", "unsafe", "use", "where",
    "while", "async", "await", "dyn", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "gen",
];

/// `sourceMediaDescription` → `source_media_description`; `RTCStats` → `rtc_stats`.
pub fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c == '-' || c == ' ' || c == '.' {
            out.push('_');
            continue;
        }
        if c.is_uppercase() {
            let prev_lower =
                i > 0 && (chars[i - 1].is_lowercase() || chars[i - 1].is_ascii_digit());
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            let prev_upper = i > 0 && chars[i - 1].is_uppercase();
            if i > 0 && (prev_lower || (prev_upper && next_lower)) && !out.ends_with('_') {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn ident(name: &str) -> String {
    let s = snake_case(name);
    if matches!(s.as_str(), "self" | "crate" | "super") {
        format!("{s}_")
    } else if KEYWORDS.contains(&s.as_str()) {
        format!("r#{s}")
    } else {
        s
    }
}

/// `NOT_FLOWING` → `NotFlowing`; `in-progress` → `InProgress`; `AES_128_CM` → `Aes128Cm`.
pub fn variant_name(value: &str) -> String {
    let mut out = String::new();
    let has_lower = value.chars().any(|c| c.is_lowercase());
    for part in value
        .split(|c: char| !c.is_alphanumeric())
        .filter(|p| !p.is_empty())
    {
        let mut cs = part.chars();
        if let Some(first) = cs.next() {
            out.extend(first.to_uppercase());
            let rest: String = cs.collect();
            if has_lower {
                out.push_str(&rest);
            } else {
                out.push_str(&rest.to_lowercase());
            }
        }
    }
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, 'V');
    }
    out
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// Turns Kurento's HTML/reST documentation into a short rustdoc paragraph.
fn doc_text(doc: &str, fallback: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in doc.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                text.push(' ');
            }
            _ if in_tag => {}
            c => text.push(c),
        }
    }
    let text = text
        .replace(":rom:cls:", "")
        .replace(":rom:meth:", "")
        .replace(":rom:attr:", "")
        .replace(":rom:evt:", "")
        .replace(":term:", "")
        .replace('`', "")
        .replace(['[', ']'], "")
        .replace("&lt;", "(")
        .replace("&gt;", ")")
        .replace(['<', '>'], "");
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut joined = words.join(" ");
    // The first sentence is enough; the full text lives in Kurento's documentation.
    if let Some(pos) = joined.find(". ") {
        joined.truncate(pos + 1);
    }
    if joined.chars().count() > 400 {
        joined = joined.chars().take(400).collect::<String>() + "…";
    }
    if joined.is_empty() {
        fallback.to_owned()
    } else {
        joined
    }
}

fn doc_lines(out: &mut String, indent: &str, text: &str) {
    for line in text.lines() {
        let _ = writeln!(out, "{indent}/// {line}");
    }
}

/// Generates one file per module plus `mod.rs`. All modules that refer to each other must be given
/// together (custom modules with the core ones they build on, which are then not emitted for
/// [`Target::External`] unless listed in `emit`).
pub fn generate(
    modules: &[Module],
    emit: &[&str],
    target: Target,
) -> Result<Vec<GeneratedFile>, GenError> {
    let idx = Index::new(modules)?;
    let mut files = Vec::new();
    let mut mod_rs = String::from(HEADER);
    for m in modules.iter().filter(|m| emit.contains(&m.name.as_str())) {
        let file_mod = format!("kms_{}", snake_case(&m.name));
        files.push(GeneratedFile {
            name: format!("{file_mod}.rs"),
            contents: gen_module(&idx, m, target)?,
        });
        let _ = writeln!(
            mod_rs,
            "#[rustfmt::skip]\nmod {file_mod};\npub use {file_mod}::*;"
        );
    }
    files.push(GeneratedFile {
        name: "mod.rs".into(),
        contents: mod_rs,
    });
    Ok(files)
}

const HEADER: &str = "// @generated by kurento-codegen from Kurento's module definitions (.kmd.json).\n// Do not edit: run `cargo run -p kurento-codegen -- --builtin` to regenerate.\n\n";

fn gen_module(idx: &Index, m: &Module, target: Target) -> Result<String, GenError> {
    let mut out = String::from(HEADER);
    let _ = writeln!(
        out,
        "//! Module `{}` {} (namespace `{}`).\n",
        m.name,
        m.version,
        m.id_namespace()
    );
    out.push_str(
        "#![allow(clippy::all, clippy::pedantic, unused_imports, non_camel_case_types)]\n\n",
    );
    match target {
        Target::Builtin => {
            out.push_str("use crate::codegen_support as rt;\nuse super::*;\n");
            out.push_str("use rt::{RemoteObject as _, IsA as _};\n\n");
        }
        Target::External => {
            out.push_str("use kurento_client::codegen_support as rt;\nuse kurento_client::*;\n");
            out.push_str("use rt::{RemoteObject as _, IsA as _};\n\n");
        }
    }
    let namespace = m.id_namespace();
    for t in &m.complex_types {
        if t.type_format == "ENUM" {
            gen_enum(&mut out, t);
        } else {
            gen_struct(&mut out, idx, t)?;
        }
    }
    for e in &m.events {
        gen_event(&mut out, idx, e)?;
    }
    for c in &m.remote_classes {
        gen_class(&mut out, idx, c, &namespace)?;
    }
    Ok(out)
}

fn gen_enum(out: &mut String, t: &ComplexType) {
    doc_lines(
        out,
        "",
        &doc_text(&t.doc, &format!("Kurento enum `{}`.", t.name)),
    );
    out.push_str("#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]\n");
    let _ = writeln!(out, "pub enum {} {{", t.name);
    let mut used = BTreeSet::new();
    for v in &t.values {
        let mut name = variant_name(v);
        while !used.insert(name.clone()) || name == "Unknown" {
            name.push('_');
        }
        let _ = writeln!(
            out,
            "    /// `{v}`\n    #[serde(rename = {v:?})]\n    {name},"
        );
    }
    out.push_str("    /// A value this client does not know (sent by a newer server); never send it.\n    #[default]\n    #[serde(other)]\n    Unknown,\n}\n\n");
    let _ = writeln!(out, "impl {} {{", t.name);
    out.push_str("    /// The value as sent on the wire.\n    pub fn as_str(&self) -> &'static str {\n        match self {\n");
    let mut used = BTreeSet::new();
    for v in &t.values {
        let mut name = variant_name(v);
        while !used.insert(name.clone()) || name == "Unknown" {
            name.push('_');
        }
        let _ = writeln!(out, "            Self::{name} => {v:?},");
    }
    out.push_str("            Self::Unknown => \"Unknown\",\n        }\n    }\n}\n\n");
}

fn struct_fields<'a>(idx: &Index<'a>, t: &'a ComplexType) -> Vec<&'a model::Property> {
    let mut chain = vec![t];
    let mut cur = t.extends.as_deref();
    while let Some(p) = cur {
        match idx.structs.get(p) {
            Some(s) => {
                chain.push(*s);
                cur = s.extends.as_deref();
            }
            None => break,
        }
    }
    chain.reverse();
    let mut seen = BTreeSet::new();
    chain
        .into_iter()
        .flat_map(|s| s.properties.iter())
        .filter(|p| seen.insert(p.name.clone()))
        .collect()
}

fn write_field(
    out: &mut String,
    idx: &Index,
    p: &model::Property,
    owner: &str,
) -> Result<(), GenError> {
    let ty = rust_type(idx, &p.ty, Pos::Field, &format!("{owner}.{}", p.name))?;
    let is_obj = is_class(idx, p.ty.trim_end_matches("[]"));
    let mut doc = doc_text(&p.doc, &format!("`{}`.", p.name));
    if is_obj {
        doc.push_str(" (object id)");
    }
    doc_lines(out, "    ", &doc);
    if p.optional {
        let _ = writeln!(
            out,
            "    #[serde(rename = {:?}, default, skip_serializing_if = \"Option::is_none\")]\n    pub {}: Option<{ty}>,",
            p.name,
            ident(&p.name)
        );
    } else {
        let _ = writeln!(
            out,
            "    #[serde(rename = {:?}, default)]\n    pub {}: {ty},",
            p.name,
            ident(&p.name)
        );
    }
    Ok(())
}

fn gen_struct(out: &mut String, idx: &Index, t: &ComplexType) -> Result<(), GenError> {
    if let Some(p) = &t.extends {
        if !idx.structs.contains_key(p.as_str()) {
            return Err(GenError::UnknownParent(t.name.clone()));
        }
    }
    doc_lines(
        out,
        "",
        &doc_text(&t.doc, &format!("Kurento type `{}`.", t.name)),
    );
    out.push_str(
        "#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]\n",
    );
    let _ = writeln!(out, "pub struct {} {{", t.name);
    for p in struct_fields(idx, t) {
        write_field(out, idx, p, &t.name)?;
    }
    if idx.extended.contains(t.name.as_str()) {
        out.push_str("    /// The concrete type the server sent (`__type__`), for values of a subtype.\n    #[serde(rename = \"__type__\", default, skip_serializing_if = \"Option::is_none\")]\n    pub concrete_type: Option<String>,\n");
        out.push_str("    /// Fields of the concrete subtype, kept as sent.\n    #[serde(flatten)]\n    pub extra: serde_json::Map<String, serde_json::Value>,\n");
    }
    out.push_str("}\n\n");
    Ok(())
}

fn event_fields<'a>(
    idx: &Index<'a>,
    e: &'a EventDef,
) -> Result<Vec<&'a model::Property>, GenError> {
    let mut chain = vec![e];
    let mut cur = e.extends.as_deref();
    while let Some(p) = cur {
        let parent = idx
            .events
            .get(p)
            .ok_or_else(|| GenError::UnknownParent(e.name.clone()))?;
        chain.push(*parent);
        cur = parent.extends.as_deref();
    }
    chain.reverse();
    let mut seen = BTreeSet::new();
    Ok(chain
        .into_iter()
        .flat_map(|s| s.properties.iter())
        .filter(|p| seen.insert(p.name.clone()))
        .collect())
}

/// The Rust name of an event's struct: Kurento's `Error` event would shadow the client's `Error`
/// type, so names that clash with hand-written items get an `Event` suffix.
pub fn event_ident(name: &str) -> String {
    match name {
        "Error" | "Result" | "Event" => format!("{name}Event"),
        _ => name.to_owned(),
    }
}

fn gen_event(out: &mut String, idx: &Index, e: &EventDef) -> Result<(), GenError> {
    let fields = event_fields(idx, e)?;
    doc_lines(out, "", &doc_text(&e.doc, &format!("Event `{}`.", e.name)));
    out.push_str(
        "#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]\n",
    );
    let _ = writeln!(out, "pub struct {} {{", event_ident(&e.name));
    for p in fields {
        write_field(out, idx, p, &e.name)?;
    }
    out.push_str("}\n\n");
    let _ = writeln!(
        out,
        "impl rt::Event for {} {{\n    const NAME: &'static str = {:?};\n}}\n",
        event_ident(&e.name),
        e.name
    );
    Ok(())
}

struct Sig {
    params: String,
    body: String,
    /// The same for a call inside a transaction (`<Class>TxMethods`).
    tx_params: String,
    tx_body: String,
    options: Option<String>,
}

/// Builds the Rust signature and the `Params` expression of an operation, outside and inside a
/// transaction. Required parameters are positional; optional ones go into an `<Op>Options` struct
/// taken as `impl Into<…>`.
fn operation_sig(idx: &Index, class: &str, op: &str, params: &[Param]) -> Result<Sig, GenError> {
    let mut sig = String::new();
    let mut body = String::from("rt::Params::new()");
    let mut tx_sig = String::new();
    let mut tx_body = String::from("rt::Params::new()");
    let required: Vec<&Param> = params.iter().filter(|p| !p.optional).collect();
    let optional: Vec<&Param> = params.iter().filter(|p| p.optional).collect();
    for p in &required {
        let context = format!("{class}.{op}({})", p.name);
        let ty = rust_type(idx, &p.ty, Pos::Param, &context)?;
        let _ = write!(sig, ", {}: {ty}", ident(&p.name));
        body.push_str(&put_expr(idx, p, &ident(&p.name)));
        let tx_ty = tx_param_type(idx, &p.ty, &context)?;
        let _ = write!(tx_sig, ", {}: {tx_ty}", ident(&p.name));
        tx_body.push_str(&tx_put_expr(idx, p, &ident(&p.name)));
    }
    let mut options = None;
    if !optional.is_empty() {
        let base = format!("{}Options", upper_first(op));
        let name = {
            let mut names = idx.option_names.borrow_mut();
            let n = if names.contains(&base) {
                format!("{class}{base}")
            } else {
                base
            };
            names.insert(n.clone());
            n
        };
        let mut def = String::new();
        let _ = writeln!(
            def,
            "/// Optional parameters of `{class}.{op}`; `()` or `Default::default()` leaves them all out."
        );
        def.push_str("#[derive(Debug, Clone, Default)]\n");
        let _ = writeln!(def, "pub struct {name} {{");
        for p in &optional {
            let ty = rust_type(idx, &p.ty, Pos::Owned, &format!("{class}.{op}({})", p.name))?;
            let ty = if is_class(idx, &p.ty) {
                "String".to_owned()
            } else {
                ty
            };
            let mut d = doc_text(&p.doc, &format!("`{}`.", p.name));
            if is_class(idx, &p.ty) {
                d.push_str(" (object id)");
            }
            doc_lines(&mut def, "    ", &d);
            let _ = writeln!(def, "    pub {}: Option<{ty}>,", ident(&p.name));
        }
        def.push_str("}\n\n");
        let _ = writeln!(def, "impl From<()> for {name} {{\n    fn from(_: ()) -> Self {{\n        Self::default()\n    }}\n}}\n");
        let first = optional[0];
        let first_ty = first.ty.as_str();
        let by_value = idx.kinds.get(first_ty) == Some(&Kind::Enum)
            || scalar(first_ty).is_some_and(|s| s != "String");
        if by_value {
            let ty = rust_type(idx, first_ty, Pos::Owned, op)?;
            let _ = writeln!(
                def,
                "impl From<{ty}> for {name} {{\n    fn from(v: {ty}) -> Self {{\n        Self {{ {}: Some(v), ..Self::default() }}\n    }}\n}}\n",
                ident(&first.name)
            );
        } else if first_ty == "String" {
            let _ = writeln!(
                def,
                "impl From<&str> for {name} {{\n    fn from(v: &str) -> Self {{\n        Self {{ {}: Some(v.to_owned()), ..Self::default() }}\n    }}\n}}\n",
                ident(&first.name)
            );
        }
        let _ = write!(sig, ", options: impl Into<{name}>");
        let _ = write!(tx_sig, ", options: impl Into<{name}>");
        let mut puts = String::new();
        for p in &optional {
            let _ = write!(puts, ".put_opt({:?}, &options.{})", p.name, ident(&p.name));
        }
        body = format!("{{ let options: {name} = options.into(); {body}{puts} }}");
        tx_body = format!("{{ let options: {name} = options.into(); {tx_body}{puts} }}");
        options = Some(def);
    }
    Ok(Sig {
        params: sig,
        body,
        tx_params: tx_sig,
        tx_body,
        options,
    })
}

fn gen_class(
    out: &mut String,
    idx: &Index,
    c: &RemoteClass,
    namespace: &str,
) -> Result<(), GenError> {
    let name = c.name.as_str();
    let mut defs = String::new();
    doc_lines(
        out,
        "",
        &doc_text(&c.doc, &format!("Remote class `{name}`.")),
    );
    out.push_str("#[derive(Clone, Debug, PartialEq, Eq, Hash)]\n");
    let _ = writeln!(out, "pub struct {name}(rt::ObjectRef);\n");
    let subs: Vec<&str> = idx
        .subclasses
        .get(name)
        .map(|s| s.iter().copied().collect())
        .unwrap_or_default();
    let accepts = subs
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(" | ");
    let _ = writeln!(
        out,
        "impl rt::RemoteObject for {name} {{\n    const TYPE_NAME: &'static str = {name:?};\n    const MODULE: &'static str = {namespace:?};\n    fn from_ref(r: rt::ObjectRef) -> Self {{\n        Self(r)\n    }}\n    fn object_ref(&self) -> &rt::ObjectRef {{\n        &self.0\n    }}\n    fn accepts_type(type_name: &str) -> bool {{\n        matches!(type_name, {accepts})\n    }}\n}}\n"
    );
    let _ = writeln!(out, "impl rt::IsA<{name}> for {name} {{}}");
    for a in idx.ancestors(name) {
        let _ = writeln!(out, "impl rt::IsA<{}> for {name} {{}}", a.name);
    }
    out.push('\n');
    // Events: this class and its ancestors' events.
    let mut events: Vec<&str> = c.events.iter().map(String::as_str).collect();
    for a in idx.ancestors(name) {
        events.extend(a.events.iter().map(String::as_str));
    }
    let mut seen_events = BTreeSet::new();
    events.retain(|e| seen_events.insert(*e));
    for e in &events {
        if !idx.events.contains_key(e) {
            return Err(GenError::UnknownType {
                context: format!("{name} events"),
                ty: (*e).to_owned(),
            });
        }
        let _ = writeln!(out, "impl rt::Emits<{}> for {name} {{}}", event_ident(e));
    }
    if !events.is_empty() {
        out.push('\n');
    }
    // Methods trait: operations defined by this class (not redefined from ancestors).
    let inherited: BTreeSet<String> = idx
        .ancestors(name)
        .iter()
        .flat_map(|a| {
            a.methods
                .iter()
                .map(|m| m.name.clone())
                .chain(a.properties.iter().flat_map(|p| {
                    [
                        format!("get{}", upper_first(&p.name)),
                        format!("set{}", upper_first(&p.name)),
                    ]
                }))
        })
        .collect();
    let mut own = BTreeSet::new();
    let mut body = String::new();
    let mut tx_body = String::new();
    for p in &c.properties {
        let getter = format!("get{}", upper_first(&p.name));
        if !inherited.contains(&getter) && own.insert(getter.clone()) {
            let ret = rust_type(idx, &p.ty, Pos::Owned, &format!("{name}.{}", p.name))?;
            doc_lines(
                &mut body,
                "    ",
                &doc_text(&p.doc, &format!("Reads property `{}`.", p.name)),
            );
            let _ = writeln!(
                body,
                "    fn {}(&self) -> impl std::future::Future<Output = rt::Result<{ret}>> + Send {{\n        self.object_ref().call({getter:?}, rt::Params::new(), {})\n    }}\n",
                ident(&getter),
                decoder(idx, Some(&p.ty))
            );
            doc_lines(
                &mut tx_body,
                "    ",
                &doc_text(&p.doc, &format!("Reads property `{}`.", p.name)),
            );
            let _ = writeln!(
                tx_body,
                "    fn {}(self) -> rt::TxResult<{ret}> {{\n        rt::TxInvoke::push_operation(self, {getter:?}, rt::Params::new(), {})\n    }}\n",
                ident(&getter),
                decoder(idx, Some(&p.ty))
            );
        }
        let setter = format!("set{}", upper_first(&p.name));
        if !p.read_only && !p.is_final && !inherited.contains(&setter) && own.insert(setter.clone())
        {
            let param = Param {
                name: p.name.clone(),
                ty: p.ty.clone(),
                doc: String::new(),
                optional: false,
            };
            let sig = operation_sig(idx, name, &setter, std::slice::from_ref(&param))?;
            let _ = writeln!(
                body,
                "    /// Writes property `{}`.\n    fn {}(&self{}) -> impl std::future::Future<Output = rt::Result<()>> + Send {{\n        self.object_ref().call({setter:?}, {}, rt::decode::unit)\n    }}\n",
                p.name,
                ident(&setter),
                sig.params,
                sig.body
            );
            let _ = writeln!(
                tx_body,
                "    /// Writes property `{}`.\n    fn {}(self{}) -> rt::TxResult<()> {{\n        rt::TxInvoke::push_operation(self, {setter:?}, {}, rt::decode::unit)\n    }}\n",
                p.name,
                ident(&setter),
                sig.tx_params,
                sig.tx_body
            );
        }
    }
    for m in &c.methods {
        if inherited.contains(&m.name) || !own.insert(m.name.clone()) {
            continue;
        }
        let sig = operation_sig(idx, name, &m.name, &m.params)?;
        if let Some(d) = sig.options {
            defs.push_str(&d);
        }
        let ret = match &m.ret {
            Some(r) => rust_type(idx, &r.ty, Pos::Owned, &format!("{name}.{}", m.name))?,
            None => "()".to_owned(),
        };
        doc_lines(
            &mut body,
            "    ",
            &doc_text(&m.doc, &format!("Calls `{}`.", m.name)),
        );
        let _ = writeln!(
            body,
            "    fn {}(&self{}) -> impl std::future::Future<Output = rt::Result<{ret}>> + Send {{\n        self.object_ref().call({:?}, {}, {})\n    }}\n",
            ident(&m.name),
            sig.params,
            m.name,
            sig.body,
            decoder(idx, m.ret.as_ref().map(|r| r.ty.as_str()))
        );
        doc_lines(
            &mut tx_body,
            "    ",
            &doc_text(&m.doc, &format!("Calls `{}`.", m.name)),
        );
        let _ = writeln!(
            tx_body,
            "    fn {}(self{}) -> rt::TxResult<{ret}> {{\n        rt::TxInvoke::push_operation(self, {:?}, {}, {})\n    }}\n",
            ident(&m.name),
            sig.tx_params,
            m.name,
            sig.tx_body,
            decoder(idx, m.ret.as_ref().map(|r| r.ty.as_str()))
        );
    }
    let trait_name = format!("{name}Methods");
    let _ = writeln!(
        out,
        "/// Operations and properties of `{name}`, for `{name}` and every subclass.\npub trait {trait_name}: rt::RemoteObject {{\n{body}}}\n"
    );
    for s in &subs {
        let _ = writeln!(out, "impl {trait_name} for {s} {{}}");
    }
    out.push('\n');
    // The same inside a transaction, on `tx.on(&object)` for this class and every subclass (also
    // those of modules generated later, which implement `IsA` of their ancestors).
    let tx_trait = format!("{name}TxMethods");
    let _ = writeln!(
        out,
        "/// Operations and properties of `{name}` inside a transaction, for `{name}` and every subclass:\n/// `tx.on(&object).operation(..)` adds the call and returns a `TxResult` to read after commit.\npub trait {tx_trait}: rt::TxInvoke {{\n{tx_body}}}\n"
    );
    let _ = writeln!(
        out,
        "impl<T: rt::IsA<{name}>> {tx_trait} for rt::TxCall<'_, T> {{}}\n"
    );
    out.push_str(&defs);
    if !c.is_abstract {
        if let Some(ctor) = &c.constructor {
            gen_builder(out, idx, c, ctor)?;
        }
    }
    Ok(())
}

fn gen_builder(
    out: &mut String,
    idx: &Index,
    c: &RemoteClass,
    ctor: &model::Constructor,
) -> Result<(), GenError> {
    let name = c.name.as_str();
    let builder = format!("{name}Builder");
    let required: Vec<&Param> = ctor.params.iter().filter(|p| !p.optional).collect();
    let optional: Vec<&Param> = ctor.params.iter().filter(|p| p.optional).collect();
    let client_from = required.iter().find(|p| is_class(idx, &p.ty));
    let mut args = String::new();
    let mut put = String::from("rt::Params::new()");
    if client_from.is_none() {
        args.push_str("client: &rt::KurentoClient");
    }
    for p in &required {
        let ty = rust_type(idx, &p.ty, Pos::Param, &format!("{name}::new({})", p.name))?;
        if !args.is_empty() {
            args.push_str(", ");
        }
        let _ = write!(args, "{}: {ty}", ident(&p.name));
        put.push_str(&put_expr(idx, p, &ident(&p.name)));
    }
    let client_expr = match client_from {
        Some(p) => format!("{}.object_ref().client().clone()", ident(&p.name)),
        None => "client.clone()".to_owned(),
    };
    let _ = writeln!(
        out,
        "/// Builds a `{name}` on the server: set optional parameters, then `.await` it.\n#[must_use = \"a builder does nothing until awaited\"]\n#[derive(Clone)]\npub struct {builder} {{\n    client: rt::KurentoClient,\n    params: rt::Params,\n}}\n"
    );
    let _ = writeln!(
        out,
        "impl {name} {{\n    /// A builder with the required constructor parameters.\n    pub fn builder({args}) -> {builder} {{\n        {builder} {{ client: {client_expr}, params: {put} }}\n    }}\n}}\n"
    );
    let mut setters = String::new();
    for p in &optional {
        let ty = rust_type(idx, &p.ty, Pos::Param, &format!("{name}::{}", p.name))?;
        doc_lines(
            &mut setters,
            "    ",
            &doc_text(&p.doc, &format!("Sets `{}`.", p.name)),
        );
        let put_one = put_expr(idx, p, "value");
        let _ = writeln!(
            setters,
            "    pub fn {}(mut self, value: {ty}) -> Self {{\n        self.params = self.params{put_one};\n        self\n    }}\n",
            ident(&p.name)
        );
    }
    let _ = writeln!(out, "impl {builder} {{\n{setters}}}\n");
    let _ = writeln!(
        out,
        "impl rt::ObjectBuilder for {builder} {{\n    type Object = {name};\n    fn client(&self) -> &rt::KurentoClient {{\n        &self.client\n    }}\n    fn constructor_params(&self) -> rt::Result<serde_json::Value> {{\n        self.params.clone().finish()\n    }}\n}}\n"
    );
    let _ = writeln!(
        out,
        "impl std::future::IntoFuture for {builder} {{\n    type Output = rt::Result<{name}>;\n    type IntoFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Self::Output> + Send>>;\n    fn into_future(self) -> Self::IntoFuture {{\n        Box::pin(rt::build(self))\n    }}\n}}\n"
    );
    if required.len() == 1 && required[0].ty == "MediaPipeline" {
        let _ = writeln!(
            out,
            "impl rt::PipelineElement for {name} {{\n    type Builder = {builder};\n    fn builder_in(pipeline: &MediaPipeline) -> {builder} {{\n        {name}::builder(pipeline)\n    }}\n}}\n"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            snake_case("sourceMediaDescription"),
            "source_media_description"
        );
        assert_eq!(snake_case("getRTCStats"), "get_rtc_stats");
        assert_eq!(snake_case("useIpv6"), "use_ipv6");
        assert_eq!(snake_case("mediaType"), "media_type");
        assert_eq!(ident("type"), "r#type");
        assert_eq!(variant_name("NOT_FLOWING"), "NotFlowing");
        assert_eq!(variant_name("in-progress"), "InProgress");
        assert_eq!(
            variant_name("AES_128_CM_HMAC_SHA1_80"),
            "Aes128CmHmacSha180"
        );
        assert_eq!(variant_name("1080p"), "V1080p");
    }

    fn tiny() -> Vec<Module> {
        let core = r#"{"name":"core","remoteClasses":[
          {"name":"MediaObject","abstract":true,"properties":[{"name":"name","type":"String"}],"events":["Error"]},
          {"name":"MediaPipeline","extends":"MediaObject","constructor":{"params":[]}},
          {"name":"MediaElement","abstract":true,"extends":"MediaObject","methods":[
            {"name":"connect","params":[{"name":"sink","type":"MediaElement"},{"name":"mediaType","type":"MediaType","optional":true}]}]}],
          "complexTypes":[{"name":"MediaType","typeFormat":"ENUM","values":["AUDIO","VIDEO"]}],
          "events":[{"name":"RaiseBase","properties":[{"name":"source","type":"MediaObject"}]},
                    {"name":"Error","extends":"RaiseBase","properties":[{"name":"errorCode","type":"int"}]}]}"#;
        let custom = r#"{"name":"platedetector","remoteClasses":[
          {"name":"PlateDetectorFilter","extends":"MediaElement","constructor":{"params":[{"name":"mediaPipeline","type":"MediaPipeline"}]},
           "events":["PlateDetected"]}],
          "events":[{"name":"PlateDetected","extends":"RaiseBase","properties":[{"name":"plate","type":"String"}]}]}"#;
        vec![parse_module(core).unwrap(), parse_module(custom).unwrap()]
    }

    #[test]
    fn custom_module_generates_against_core() {
        let files = generate(&tiny(), &["platedetector"], Target::External).unwrap();
        let f = files
            .iter()
            .find(|f| f.name == "kms_platedetector.rs")
            .unwrap();
        assert!(f
            .contents
            .contains("pub struct PlateDetectorFilter(rt::ObjectRef);"));
        assert!(f
            .contents
            .contains("impl rt::IsA<MediaElement> for PlateDetectorFilter {}"));
        assert!(f
            .contents
            .contains("impl rt::Emits<PlateDetected> for PlateDetectorFilter {}"));
        assert!(f
            .contents
            .contains("impl rt::Emits<ErrorEvent> for PlateDetectorFilter {}"));
        assert!(f
            .contents
            .contains("impl rt::PipelineElement for PlateDetectorFilter"));
        assert!(f.contents.contains("use kurento_client::*;"));
        // Inherited events carry their parents' fields.
        assert!(f.contents.contains("pub source: String,"));
        assert!(!files.iter().any(|f| f.name == "kms_core.rs"));
    }

    #[test]
    fn optional_params_become_options_with_from_impls() {
        let files = generate(&tiny(), &["core"], Target::Builtin).unwrap();
        let core = &files
            .iter()
            .find(|f| f.name == "kms_core.rs")
            .unwrap()
            .contents;
        assert!(core.contains("fn connect(&self, sink: &impl rt::IsA<MediaElement>, options: impl Into<ConnectOptions>)"));
        assert!(core.contains("impl From<MediaType> for ConnectOptions"));
        assert!(core.contains("impl MediaObjectMethods for MediaPipeline {}"));
        assert!(core.contains("#[serde(other)]\n    Unknown,"));
    }

    /// A class with an object parameter, an optional parameter, return values (plain and object)
    /// and properties; a concrete subclass two levels down.
    fn tx_fixture() -> Vec<Module> {
        let core = r#"{"name":"core","remoteClasses":[
          {"name":"MediaObject","abstract":true,"properties":[{"name":"name","type":"String"}],
           "methods":[{"name":"addTag","params":[{"name":"key","type":"String"},{"name":"value","type":"String"}]}]},
          {"name":"MediaPipeline","extends":"MediaObject","constructor":{"params":[]}},
          {"name":"MediaElement","abstract":true,"extends":"MediaObject","methods":[
            {"name":"connect","params":[{"name":"sink","type":"MediaElement"},{"name":"mediaType","type":"MediaType","optional":true}]},
            {"name":"getPeer","params":[],"return":{"type":"MediaElement"}}]},
          {"name":"SdpEndpoint","abstract":true,"extends":"MediaElement","methods":[
            {"name":"processOffer","params":[{"name":"offer","type":"String"}],"return":{"type":"String"}}]},
          {"name":"RtpEndpoint","extends":"SdpEndpoint","constructor":{"params":[{"name":"mediaPipeline","type":"MediaPipeline"}]}}],
          "complexTypes":[{"name":"MediaType","typeFormat":"ENUM","values":["AUDIO","VIDEO"]}]}"#;
        vec![parse_module(core).unwrap()]
    }

    fn core_of(modules: &[Module]) -> String {
        generate(modules, &["core"], Target::Builtin)
            .unwrap()
            .into_iter()
            .find(|f| f.name == "kms_core.rs")
            .unwrap()
            .contents
    }

    #[test]
    fn every_operation_gets_a_typed_transaction_call() {
        let core = core_of(&tx_fixture());
        // Object parameter (an object or a TxRef of a MediaElement) and optional parameters in the
        // same options struct as the direct call.
        assert!(core.contains(
            "pub trait MediaElementTxMethods: rt::TxInvoke {\n    /// Calls `connect`.\n    fn connect(self, sink: impl rt::TxArg<MediaElement>, options: impl Into<ConnectOptions>) -> rt::TxResult<()> {\n        rt::TxInvoke::push_operation(self, \"connect\", { let options: ConnectOptions = options.into(); rt::Params::new().put_tx_object(\"sink\", sink).put_opt(\"mediaType\", &options.media_type) }, rt::decode::unit)\n    }\n"
        ), "{core}");
        assert_eq!(core.matches("pub struct ConnectOptions").count(), 1);
        // Return values are decoded as by the direct call: plain values and objects.
        assert!(core.contains(
            "    fn process_offer(self, offer: &str) -> rt::TxResult<String> {\n        rt::TxInvoke::push_operation(self, \"processOffer\", rt::Params::new().put(\"offer\", offer), rt::decode::value)\n    }\n"
        ));
        assert!(core.contains(
            "    fn get_peer(self) -> rt::TxResult<MediaElement> {\n        rt::TxInvoke::push_operation(self, \"getPeer\", rt::Params::new(), rt::decode::object::<MediaElement>)\n    }\n"
        ));
        // Properties.
        assert!(core.contains(
            "    fn get_name(self) -> rt::TxResult<String> {\n        rt::TxInvoke::push_operation(self, \"getName\", rt::Params::new(), rt::decode::value)\n    }\n"
        ));
        assert!(core.contains(
            "    fn set_name(self, name: &str) -> rt::TxResult<()> {\n        rt::TxInvoke::push_operation(self, \"setName\", rt::Params::new().put(\"name\", name), rt::decode::unit)\n    }\n"
        ));
        assert!(core.contains(
            "    fn add_tag(self, key: &str, value: &str) -> rt::TxResult<()> {\n        rt::TxInvoke::push_operation(self, \"addTag\", rt::Params::new().put(\"key\", key).put(\"value\", value), rt::decode::unit)\n    }\n"
        ));
    }

    #[test]
    fn subclasses_get_their_ancestors_transaction_calls() {
        let core = core_of(&tx_fixture());
        // Each trait applies to a call on any `T` that is its class: RtpEndpoint reaches
        // processOffer, connect and addTag through its IsA impls ...
        for class in ["MediaObject", "MediaElement", "SdpEndpoint", "RtpEndpoint"] {
            assert!(
                core.contains(&format!(
                    "impl<T: rt::IsA<{class}>> {class}TxMethods for rt::TxCall<'_, T> {{}}"
                )),
                "{class}"
            );
        }
        for ancestor in ["MediaObject", "MediaElement", "SdpEndpoint"] {
            assert!(core.contains(&format!("impl rt::IsA<{ancestor}> for RtpEndpoint {{}}")));
        }
        // ... and its own trait does not repeat them.
        assert!(core.contains("pub trait RtpEndpointTxMethods: rt::TxInvoke {\n}\n"));
        assert_eq!(core.matches("fn process_offer(self").count(), 1);
        assert_eq!(core.matches("fn connect(self").count(), 1);
    }

    #[test]
    fn custom_modules_get_transaction_calls_and_inherit_the_core_ones() {
        let files = generate(&tiny(), &["platedetector"], Target::External).unwrap();
        let f = &files
            .iter()
            .find(|f| f.name == "kms_platedetector.rs")
            .unwrap()
            .contents;
        assert!(f.contains("pub trait PlateDetectorFilterTxMethods: rt::TxInvoke {"));
        assert!(f.contains(
            "impl<T: rt::IsA<PlateDetectorFilter>> PlateDetectorFilterTxMethods for rt::TxCall<'_, T> {}"
        ));
        // The core's `impl<T: IsA<MediaElement>> MediaElementTxMethods for TxCall<'_, T>` covers it.
        assert!(f.contains("impl rt::IsA<MediaElement> for PlateDetectorFilter {}"));
    }

    #[test]
    fn unknown_types_are_reported() {
        let bad = r#"{"name":"x","remoteClasses":[{"name":"A","methods":[{"name":"f","params":[{"name":"p","type":"Nope"}]}]}]}"#;
        let err = generate(&[parse_module(bad).unwrap()], &["x"], Target::External).unwrap_err();
        assert!(err.to_string().contains("unknown type `Nope`"), "{err}");
    }
}
