//! A parser for the `.proto` subset a ThingsBoard device profile accepts, resolved into
//! descriptors the dynamic codec walks.
//!
//! ThingsBoard parses profile schemas with Square's wire parser and builds descriptors with its
//! fork of `protobuf-dynamic` (`DynamicProtoUtils`, `DeviceProfileDataValidator`): proto3
//! only; no imports, file or message options, extensions, reserved ranges, groups, `required`
//! or default values; enums at the top level or nested (no options). Fields are `optional`
//! (proto3 explicit presence), `repeated` or unlabelled; `oneof` is allowed. The message used
//! is the **last top-level message** of the file (`getDynamicMessageBuilder`). Field options
//! in `[...]` are read and ignored, as the descriptor builder ignores them. `map<,>` fields,
//! services and well-known-type imports are refused here with a typed error.

use std::collections::HashSet;
use std::fmt;

use super::wire::MAX_FIELD_NUMBER;

/// Deepest nesting of message and enum definitions accepted.
const MAX_NESTING: usize = 32;
/// Largest schema text accepted, in bytes.
const MAX_SCHEMA_LEN: usize = 256 * 1024;

/// Why a schema text is not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SchemaErrorKind {
    /// The text is not valid `.proto` syntax (with the byte offset where parsing stopped).
    Syntax {
        /// Byte offset in the schema text.
        offset: usize,
        /// What was expected or found.
        message: String,
    },
    /// `syntax = "proto3";` is missing or names another syntax.
    NotProto3,
    /// A construct ThingsBoard refuses in profile schemas (imports, options, `required`,
    /// reserved ranges, extensions, groups, maps, services, default values...).
    Unsupported(String),
    /// The file defines no message.
    NoMessage,
    /// A field refers to a type that is not defined.
    UnknownType(String),
    /// A field number is 0, above 2^29 - 1, in the reserved 19000-19999 range, or used twice.
    InvalidFieldNumber(String),
    /// Two fields, messages or enum values share a name in one scope.
    Duplicate(String),
    /// A proto3 enum whose first value is not 0, or an empty enum.
    InvalidEnum(String),
    /// The text is larger than the emulator accepts, or nested too deeply.
    TooLarge,
}

impl fmt::Display for SchemaErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax { offset, message } => {
                write!(f, "syntax error at byte {offset}: {message}")
            }
            Self::NotProto3 => f.write_str("only proto3 schemas are allowed"),
            Self::Unsupported(what) => write!(f, "{what} are not supported"),
            Self::NoMessage => f.write_str("at least one message definition should exist"),
            Self::UnknownType(t) => write!(f, "unknown type {t:?}"),
            Self::InvalidFieldNumber(what) => write!(f, "invalid field number: {what}"),
            Self::Duplicate(what) => write!(f, "duplicate name {what:?}"),
            Self::InvalidEnum(what) => write!(f, "invalid enum {what}"),
            Self::TooLarge => f.write_str("schema too large or nested too deeply"),
        }
    }
}

/// A scalar field type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scalar {
    Double,
    Float,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Bool,
    String,
    Bytes,
}

impl Scalar {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "double" => Self::Double,
            "float" => Self::Float,
            "int32" => Self::Int32,
            "int64" => Self::Int64,
            "uint32" => Self::Uint32,
            "uint64" => Self::Uint64,
            "sint32" => Self::Sint32,
            "sint64" => Self::Sint64,
            "fixed32" => Self::Fixed32,
            "fixed64" => Self::Fixed64,
            "sfixed32" => Self::Sfixed32,
            "sfixed64" => Self::Sfixed64,
            "bool" => Self::Bool,
            "string" => Self::String,
            "bytes" => Self::Bytes,
            _ => return None,
        })
    }
}

/// What a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldKind {
    Scalar(Scalar),
    /// Index into [`Schema::messages`].
    Message(usize),
    /// Index into [`Schema::enums`].
    Enum(usize),
}

/// A field's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Label {
    /// No label: proto3 implicit presence.
    Implicit,
    /// `optional`: explicit presence (a synthetic oneof).
    Optional,
    /// `repeated`.
    Repeated,
}

/// One field of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldDef {
    pub(crate) name: String,
    /// protobuf's default JSON name (lowerCamelCase of the field name).
    pub(crate) json_name: String,
    pub(crate) number: u32,
    pub(crate) label: Label,
    pub(crate) kind: FieldKind,
    /// Index of the real `oneof` the field belongs to, within its message.
    pub(crate) oneof: Option<usize>,
}

impl FieldDef {
    /// Whether "unset" differs from "default" (presence is tracked).
    pub(crate) fn has_presence(&self) -> bool {
        self.label == Label::Optional
            || self.oneof.is_some()
            || (self.label != Label::Repeated && matches!(self.kind, FieldKind::Message(_)))
    }

    pub(crate) fn is_repeated(&self) -> bool {
        self.label == Label::Repeated
    }
}

/// A message type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MessageDef {
    /// Fully qualified name without the leading dot.
    pub(crate) name: String,
    /// Fields sorted by number.
    pub(crate) fields: Vec<FieldDef>,
}

impl MessageDef {
    pub(crate) fn field(&self, number: u32) -> Option<&FieldDef> {
        self.fields
            .binary_search_by_key(&number, |f| f.number)
            .ok()
            .and_then(|i| self.fields.get(i))
    }
}

/// An enum type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnumDef {
    pub(crate) name: String,
    /// Values in declaration order (the first is the default).
    pub(crate) values: Vec<(String, i32)>,
}

impl EnumDef {
    pub(crate) fn name_of(&self, number: i32) -> Option<&str> {
        self.values
            .iter()
            .find(|(_, n)| *n == number)
            .map(|(name, _)| name.as_str())
    }

    pub(crate) fn number_of(&self, name: &str) -> Option<i32> {
        self.values.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    pub(crate) fn default_name(&self) -> &str {
        self.values.first().map_or("", |(n, _)| n.as_str())
    }
}

/// A parsed, resolved schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Schema {
    pub(crate) messages: Vec<MessageDef>,
    pub(crate) enums: Vec<EnumDef>,
    /// The message ThingsBoard uses: the last top-level one.
    pub(crate) root: usize,
}

impl Schema {
    pub(crate) fn message(&self, index: usize) -> Option<&MessageDef> {
        self.messages.get(index)
    }

    /// Parses and resolves `text`.
    pub(crate) fn parse(text: &str) -> Result<Self, SchemaErrorKind> {
        if text.len() > MAX_SCHEMA_LEN {
            return Err(SchemaErrorKind::TooLarge);
        }
        let tokens = tokenize(text)?;
        let file = Parser {
            tokens,
            pos: 0,
            text_len: text.len(),
        }
        .file()?;
        resolve(file)
    }
}

// ---- tokens ---------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Int(String),
    Str(String),
    Sym(char),
}

fn syntax(offset: usize, message: impl Into<String>) -> SchemaErrorKind {
    SchemaErrorKind::Syntax {
        offset,
        message: message.into(),
    }
}

fn tokenize(text: &str) -> Result<Vec<(usize, Tok)>, SchemaErrorKind> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let start = i;
        match b {
            b if b.is_ascii_whitespace() => i += 1,
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while bytes.get(i).is_some_and(|&c| c != b'\n') {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                loop {
                    match bytes.get(i) {
                        None => return Err(syntax(start, "unterminated comment")),
                        Some(b'*') if bytes.get(i + 1) == Some(&b'/') => {
                            i += 2;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
            }
            b'"' | b'\'' => {
                let quote = b;
                i += 1;
                let mut s = Vec::new();
                loop {
                    match bytes.get(i) {
                        None | Some(b'\n') => return Err(syntax(start, "unterminated string")),
                        Some(&c) if c == quote => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => {
                            let Some(&e) = bytes.get(i + 1) else {
                                return Err(syntax(start, "unterminated string"));
                            };
                            s.push(e);
                            i += 2;
                        }
                        Some(&c) => {
                            s.push(c);
                            i += 1;
                        }
                    }
                }
                out.push((start, Tok::Str(String::from_utf8_lossy(&s).into_owned())));
            }
            b if b.is_ascii_alphabetic() || b == b'_' || b == b'.' && ident_follows(bytes, i) => {
                i += 1;
                while bytes
                    .get(i)
                    .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
                {
                    i += 1;
                }
                out.push((
                    start,
                    Tok::Ident(text.get(start..i).unwrap_or("").to_owned()),
                ));
            }
            b if b.is_ascii_digit() || b == b'-' => {
                i += 1;
                while bytes.get(i).is_some_and(|&c| {
                    c.is_ascii_alphanumeric() || c == b'.' || c == b'+' || c == b'-'
                }) {
                    i += 1;
                }
                out.push((start, Tok::Int(text.get(start..i).unwrap_or("").to_owned())));
            }
            b'{' | b'}' | b'[' | b']' | b'(' | b')' | b'<' | b'>' | b'=' | b';' | b',' => {
                out.push((start, Tok::Sym(b as char)));
                i += 1;
            }
            other => {
                return Err(syntax(
                    start,
                    format!("unexpected character {:?}", other as char),
                ))
            }
        }
    }
    Ok(out)
}

fn ident_follows(bytes: &[u8], i: usize) -> bool {
    bytes
        .get(i + 1)
        .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
}

// ---- syntax tree ----------------------------------------------------------------------------

#[derive(Debug)]
struct RawField {
    label: Label,
    type_name: String,
    name: String,
    number: u32,
    oneof: Option<usize>,
    offset: usize,
}

#[derive(Debug, Default)]
struct RawMessage {
    name: String,
    fields: Vec<RawField>,
    oneofs: usize,
    messages: Vec<RawMessage>,
    enums: Vec<RawEnum>,
}

#[derive(Debug)]
struct RawEnum {
    name: String,
    values: Vec<(String, i32)>,
}

#[derive(Debug)]
struct RawFile {
    package: String,
    messages: Vec<RawMessage>,
    enums: Vec<RawEnum>,
}

struct Parser {
    tokens: Vec<(usize, Tok)>,
    pos: usize,
    text_len: usize,
}

impl Parser {
    fn offset(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.text_len, |(o, _)| *o)
    }

    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn next(&mut self) -> Result<Tok, SchemaErrorKind> {
        let tok = self
            .tokens
            .get(self.pos)
            .map(|(_, t)| t.clone())
            .ok_or_else(|| syntax(self.text_len, "unexpected end of schema"))?;
        self.pos += 1;
        Ok(tok)
    }

    fn expect_sym(&mut self, c: char) -> Result<(), SchemaErrorKind> {
        let at = self.offset();
        match self.next()? {
            Tok::Sym(s) if s == c => Ok(()),
            other => Err(syntax(at, format!("expected {c:?}, found {other:?}"))),
        }
    }

    fn eat_sym(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::Sym(c)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn ident(&mut self) -> Result<String, SchemaErrorKind> {
        let at = self.offset();
        match self.next()? {
            Tok::Ident(s) => Ok(s),
            other => Err(syntax(at, format!("expected a name, found {other:?}"))),
        }
    }

    fn simple_ident(&mut self) -> Result<String, SchemaErrorKind> {
        let at = self.offset();
        let s = self.ident()?;
        if s.contains('.') {
            return Err(syntax(at, format!("{s:?} is not a simple name")));
        }
        Ok(s)
    }

    fn int(&mut self) -> Result<i64, SchemaErrorKind> {
        let at = self.offset();
        match self.next()? {
            Tok::Int(s) => parse_int(&s).ok_or_else(|| syntax(at, format!("bad number {s:?}"))),
            other => Err(syntax(at, format!("expected a number, found {other:?}"))),
        }
    }

    fn file(mut self) -> Result<RawFile, SchemaErrorKind> {
        let mut syntax_seen = false;
        let mut file = RawFile {
            package: String::new(),
            messages: Vec::new(),
            enums: Vec::new(),
        };
        while let Some(tok) = self.peek().cloned() {
            let at = self.offset();
            match tok {
                Tok::Sym(';') => self.pos += 1,
                Tok::Ident(word) => {
                    self.pos += 1;
                    match word.as_str() {
                        "syntax" => {
                            self.expect_sym('=')?;
                            let Tok::Str(s) = self.next()? else {
                                return Err(syntax(at, "expected the syntax string"));
                            };
                            self.expect_sym(';')?;
                            if s != "proto3" {
                                return Err(SchemaErrorKind::NotProto3);
                            }
                            syntax_seen = true;
                        }
                        "package" => {
                            file.package = self.ident()?;
                            self.expect_sym(';')?;
                        }
                        "message" => file.messages.push(self.message(1)?),
                        "enum" => file.enums.push(self.enumeration()?),
                        "import" => return Err(SchemaErrorKind::Unsupported("imports".into())),
                        "option" => {
                            return Err(SchemaErrorKind::Unsupported("schema options".into()))
                        }
                        "extend" => {
                            return Err(SchemaErrorKind::Unsupported("extend declarations".into()))
                        }
                        "service" => return Err(SchemaErrorKind::Unsupported("services".into())),
                        other => return Err(syntax(at, format!("unexpected {other:?}"))),
                    }
                }
                other => return Err(syntax(at, format!("unexpected {other:?}"))),
            }
        }
        if !syntax_seen {
            return Err(SchemaErrorKind::NotProto3);
        }
        if file.messages.is_empty() {
            return Err(SchemaErrorKind::NoMessage);
        }
        Ok(file)
    }

    fn message(&mut self, depth: usize) -> Result<RawMessage, SchemaErrorKind> {
        if depth > MAX_NESTING {
            return Err(SchemaErrorKind::TooLarge);
        }
        let mut msg = RawMessage {
            name: self.simple_ident()?,
            ..RawMessage::default()
        };
        self.expect_sym('{')?;
        loop {
            let at = self.offset();
            match self.next()? {
                Tok::Sym('}') => return Ok(msg),
                Tok::Sym(';') => {}
                Tok::Ident(word) => match word.as_str() {
                    "message" => msg.messages.push(self.message(depth + 1)?),
                    "enum" => msg.enums.push(self.enumeration()?),
                    "oneof" => {
                        let index = msg.oneofs;
                        msg.oneofs += 1;
                        self.simple_ident()?;
                        self.expect_sym('{')?;
                        while !self.eat_sym('}') {
                            if self.eat_sym(';') {
                                continue;
                            }
                            let type_at = self.offset();
                            let type_name = self.ident()?;
                            if matches!(type_name.as_str(), "optional" | "repeated" | "required") {
                                return Err(syntax(type_at, "oneof fields take no label"));
                            }
                            let mut f = self.field_rest(Label::Implicit, type_name, type_at)?;
                            f.oneof = Some(index);
                            msg.fields.push(f);
                        }
                    }
                    "option" => return Err(SchemaErrorKind::Unsupported("message options".into())),
                    "reserved" => {
                        return Err(SchemaErrorKind::Unsupported("reserved elements".into()))
                    }
                    "extensions" | "extend" => {
                        return Err(SchemaErrorKind::Unsupported("message extensions".into()))
                    }
                    "required" => {
                        return Err(SchemaErrorKind::Unsupported("required labels".into()))
                    }
                    "group" => return Err(SchemaErrorKind::Unsupported("groups".into())),
                    "map" if self.peek() == Some(&Tok::Sym('<')) => {
                        return Err(SchemaErrorKind::Unsupported("map fields".into()))
                    }
                    "optional" | "repeated" => {
                        let label = if word == "optional" {
                            Label::Optional
                        } else {
                            Label::Repeated
                        };
                        let type_at = self.offset();
                        let type_name = self.ident()?;
                        if type_name == "group" {
                            return Err(SchemaErrorKind::Unsupported("groups".into()));
                        }
                        if type_name == "map" && self.peek() == Some(&Tok::Sym('<')) {
                            return Err(SchemaErrorKind::Unsupported("map fields".into()));
                        }
                        let f = self.field_rest(label, type_name, type_at)?;
                        msg.fields.push(f);
                    }
                    _ => {
                        let f = self.field_rest(Label::Implicit, word, at)?;
                        msg.fields.push(f);
                    }
                },
                other => return Err(syntax(at, format!("unexpected {other:?} in message"))),
            }
        }
    }

    /// `name = number [options];` after the label and type.
    fn field_rest(
        &mut self,
        label: Label,
        type_name: String,
        offset: usize,
    ) -> Result<RawField, SchemaErrorKind> {
        let name = self.simple_ident()?;
        self.expect_sym('=')?;
        let at = self.offset();
        let number = self.int()?;
        let number = u32::try_from(number)
            .map_err(|_| SchemaErrorKind::InvalidFieldNumber(format!("{name} = {number}")))?;
        if self.eat_sym('[') {
            self.field_options()?;
        }
        self.expect_sym(';')
            .map_err(|_| syntax(at, "expected ';' after the field number"))?;
        Ok(RawField {
            label,
            type_name,
            name,
            number,
            oneof: None,
            offset,
        })
    }

    /// Skips `[a = b, (c).d = "e"]` after `[`; `default` is refused as ThingsBoard does.
    fn field_options(&mut self) -> Result<(), SchemaErrorKind> {
        let mut depth = 1usize;
        let mut expect_name = true;
        while depth > 0 {
            let at = self.offset();
            match self.next()? {
                Tok::Sym('[') => depth += 1,
                Tok::Sym(']') => depth -= 1,
                Tok::Sym(',') => expect_name = true,
                Tok::Ident(s) if expect_name && s == "default" => {
                    return Err(SchemaErrorKind::Unsupported("default values".into()))
                }
                Tok::Sym(';') | Tok::Sym('{') | Tok::Sym('}') => {
                    return Err(syntax(at, "unterminated field options"))
                }
                _ => expect_name = false,
            }
        }
        Ok(())
    }

    fn enumeration(&mut self) -> Result<RawEnum, SchemaErrorKind> {
        let name = self.simple_ident()?;
        self.expect_sym('{')?;
        let mut values = Vec::new();
        loop {
            let at = self.offset();
            match self.next()? {
                Tok::Sym('}') => break,
                Tok::Sym(';') => {}
                Tok::Ident(word) if word == "option" => {
                    return Err(SchemaErrorKind::Unsupported(
                        "enum definitions options".into(),
                    ))
                }
                Tok::Ident(word) if word == "reserved" => {
                    return Err(SchemaErrorKind::Unsupported("reserved elements".into()))
                }
                Tok::Ident(word) if word == "message" || word == "enum" => {
                    return Err(SchemaErrorKind::Unsupported(
                        "nested types in enum definitions".into(),
                    ))
                }
                Tok::Ident(value) => {
                    self.expect_sym('=')?;
                    let n = self.int()?;
                    let n = i32::try_from(n).map_err(|_| {
                        SchemaErrorKind::InvalidEnum(format!("{name}.{value} = {n}"))
                    })?;
                    if self.eat_sym('[') {
                        self.field_options()?;
                    }
                    self.expect_sym(';')?;
                    values.push((value, n));
                }
                other => return Err(syntax(at, format!("unexpected {other:?} in enum"))),
            }
        }
        Ok(RawEnum { name, values })
    }
}

fn parse_int(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let magnitude = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        i64::from_str_radix(hex, 16).ok()?
    } else if digits.len() > 1 && digits.starts_with('0') {
        i64::from_str_radix(&digits[1..], 8).ok()?
    } else {
        digits.parse::<i64>().ok()?
    };
    Some(if neg { -magnitude } else { magnitude })
}

/// protobuf's `ToJsonName`: drop underscores, upper-case the letter after each.
pub(crate) fn json_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

// ---- resolution -----------------------------------------------------------------------------

/// Flattens the tree into indexed messages and enums, then resolves field types by protobuf's
/// scoping rule (innermost scope outwards; `.pkg.Name` absolute).
fn resolve(file: RawFile) -> Result<Schema, SchemaErrorKind> {
    let package = file.package;
    let prefix = if package.is_empty() {
        String::new()
    } else {
        format!("{package}.")
    };
    let mut names: Vec<String> = Vec::new();
    let mut enums: Vec<EnumDef> = Vec::new();
    let mut pending: Vec<(String, Vec<RawField>)> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let top_count = file.messages.len();
    let mut root = 0;
    for e in file.enums {
        add_enum(&prefix, e, &mut enums, &mut seen)?;
    }
    for (i, m) in file.messages.into_iter().enumerate() {
        let index = flatten(&prefix, m, &mut names, &mut enums, &mut pending, &mut seen)?;
        if i + 1 == top_count {
            root = index;
        }
    }
    let mut messages = Vec::with_capacity(pending.len());
    for (full, raw_fields) in pending {
        let scope = full.clone();
        let mut fields = Vec::with_capacity(raw_fields.len());
        let mut numbers = HashSet::new();
        let mut field_names = HashSet::new();
        for f in raw_fields {
            if f.number == 0 || f.number > MAX_FIELD_NUMBER || (19_000..=19_999).contains(&f.number)
            {
                return Err(SchemaErrorKind::InvalidFieldNumber(format!(
                    "{}.{} = {}",
                    full, f.name, f.number
                )));
            }
            if !numbers.insert(f.number) {
                return Err(SchemaErrorKind::InvalidFieldNumber(format!(
                    "{} used twice in {full}",
                    f.number
                )));
            }
            if !field_names.insert(f.name.clone()) {
                return Err(SchemaErrorKind::Duplicate(format!("{full}.{}", f.name)));
            }
            let kind = match Scalar::from_name(&f.type_name) {
                Some(s) => FieldKind::Scalar(s),
                None => lookup(&scope, &package, &f.type_name, &names, &enums)
                    .ok_or_else(|| SchemaErrorKind::UnknownType(f.type_name.clone()))?,
            };
            let _ = f.offset;
            fields.push(FieldDef {
                json_name: json_name(&f.name),
                name: f.name,
                number: f.number,
                label: f.label,
                kind,
                oneof: f.oneof,
            });
        }
        fields.sort_by_key(|f| f.number);
        messages.push(MessageDef { name: full, fields });
    }
    Ok(Schema {
        messages,
        enums,
        root,
    })
}

fn add_enum(
    scope: &str,
    e: RawEnum,
    enums: &mut Vec<EnumDef>,
    seen: &mut HashSet<String>,
) -> Result<(), SchemaErrorKind> {
    let full = format!("{scope}{}", e.name);
    if !seen.insert(full.clone()) {
        return Err(SchemaErrorKind::Duplicate(full));
    }
    match e.values.first() {
        None => {
            return Err(SchemaErrorKind::InvalidEnum(format!(
                "{full} has no values"
            )))
        }
        Some((_, n)) if *n != 0 => {
            return Err(SchemaErrorKind::InvalidEnum(format!(
                "{full}: the first enum value must be zero in proto3"
            )))
        }
        Some(_) => {}
    }
    let mut value_names = HashSet::new();
    for (name, _) in &e.values {
        if !value_names.insert(name.clone()) {
            return Err(SchemaErrorKind::Duplicate(format!("{full}.{name}")));
        }
    }
    enums.push(EnumDef {
        name: full,
        values: e.values,
    });
    Ok(())
}

/// Pushes `m` and its nested types; returns `m`'s message index.
fn flatten(
    scope: &str,
    m: RawMessage,
    names: &mut Vec<String>,
    enums: &mut Vec<EnumDef>,
    pending: &mut Vec<(String, Vec<RawField>)>,
    seen: &mut HashSet<String>,
) -> Result<usize, SchemaErrorKind> {
    let full = format!("{scope}{}", m.name);
    if !seen.insert(full.clone()) {
        return Err(SchemaErrorKind::Duplicate(full));
    }
    let index = names.len();
    names.push(full.clone());
    pending.push((full.clone(), m.fields));
    let inner = format!("{full}.");
    for e in m.enums {
        add_enum(&inner, e, enums, seen)?;
    }
    for nested in m.messages {
        flatten(&inner, nested, names, enums, pending, seen)?;
    }
    Ok(index)
}

fn lookup(
    scope: &str,
    package: &str,
    type_name: &str,
    messages: &[String],
    enums: &[EnumDef],
) -> Option<FieldKind> {
    let find = |full: &str| {
        messages
            .iter()
            .position(|m| m == full)
            .map(FieldKind::Message)
            .or_else(|| {
                enums
                    .iter()
                    .position(|e| e.name == full)
                    .map(FieldKind::Enum)
            })
    };
    if let Some(absolute) = type_name.strip_prefix('.') {
        return find(absolute);
    }
    // Innermost scope outwards: Outer.Inner.T, Outer.T, pkg.T, T.
    let mut scope = scope.to_owned();
    loop {
        let candidate = if scope.is_empty() {
            type_name.to_owned()
        } else {
            format!("{scope}.{type_name}")
        };
        if let Some(kind) = find(&candidate) {
            return Some(kind);
        }
        if scope.is_empty() {
            break;
        }
        match scope.rfind('.') {
            Some(i) => scope.truncate(i),
            None => scope.clear(),
        }
    }
    let _ = package;
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TELEMETRY: &str = super::super::profile::ProtoSchemas::DEFAULT_TELEMETRY;

    #[test]
    fn parses_thingsboards_default_telemetry_schema() {
        let s = Schema::parse(TELEMETRY).unwrap();
        let root = s.message(s.root).unwrap();
        assert_eq!(root.name, "telemetry.SensorDataReading");
        assert_eq!(root.fields.len(), 3);
        let inner = root.field(3).unwrap();
        assert_eq!(inner.label, Label::Implicit);
        assert!(inner.has_presence(), "message fields track presence");
        let FieldKind::Message(i) = inner.kind else {
            panic!("{inner:?}")
        };
        assert_eq!(
            s.message(i).unwrap().name,
            "telemetry.SensorDataReading.InnerObject"
        );
        assert!(root.field(1).unwrap().has_presence());
    }

    #[test]
    fn the_last_top_level_message_is_the_root_and_types_resolve_by_scope() {
        let s = Schema::parse(
            "syntax = \"proto3\"; // comment\n/* block */ enum Mode { OFF = 0; ON = 1; }\n\
             message A { int32 x = 1; }\n\
             message B { A a = 1; repeated Mode modes = 2; string my_field = 3 [json_name = \"q\"];\n\
               oneof choice { int64 n = 4; string t = 5; } }",
        )
        .unwrap();
        let root = s.message(s.root).unwrap();
        assert_eq!(root.name, "B");
        assert_eq!(root.field(1).unwrap().kind, FieldKind::Message(0));
        assert_eq!(root.field(2).unwrap().kind, FieldKind::Enum(0));
        assert_eq!(root.field(3).unwrap().json_name, "myField");
        assert_eq!(root.field(5).unwrap().oneof, Some(0));
    }

    #[test]
    fn refuses_what_thingsboard_refuses() {
        let cases = [
            ("message A { int32 x = 1; }", SchemaErrorKind::NotProto3),
            (
                "syntax = \"proto2\"; message A { optional int32 x = 1; }",
                SchemaErrorKind::NotProto3,
            ),
            ("syntax = \"proto3\";", SchemaErrorKind::NoMessage),
            (
                "syntax = \"proto3\"; import \"x.proto\"; message A {}",
                SchemaErrorKind::Unsupported("imports".into()),
            ),
            (
                "syntax = \"proto3\"; option java_package = \"x\"; message A {}",
                SchemaErrorKind::Unsupported("schema options".into()),
            ),
            (
                "syntax = \"proto3\"; message A { required int32 x = 1; }",
                SchemaErrorKind::Unsupported("required labels".into()),
            ),
            (
                "syntax = \"proto3\"; message A { reserved 2; }",
                SchemaErrorKind::Unsupported("reserved elements".into()),
            ),
            (
                "syntax = \"proto3\"; message A { map<string, int32> m = 1; }",
                SchemaErrorKind::Unsupported("map fields".into()),
            ),
            (
                "syntax = \"proto3\"; message A { int32 x = 1 [default = 5]; }",
                SchemaErrorKind::Unsupported("default values".into()),
            ),
            (
                "syntax = \"proto3\"; message A { Nope x = 1; }",
                SchemaErrorKind::UnknownType("Nope".into()),
            ),
            (
                "syntax = \"proto3\"; enum E { A = 1; } message M { E e = 1; }",
                SchemaErrorKind::InvalidEnum(
                    "E: the first enum value must be zero in proto3".into(),
                ),
            ),
            (
                "syntax = \"proto3\"; message A { int32 x = 1; int32 y = 1; }",
                SchemaErrorKind::InvalidFieldNumber("1 used twice in A".into()),
            ),
            (
                "syntax = \"proto3\"; message A { int32 x = 19000; }",
                SchemaErrorKind::InvalidFieldNumber("A.x = 19000".into()),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(Schema::parse(text), Err(want), "{text}");
        }
        assert!(matches!(
            Schema::parse("syntax = \"proto3\"; message A { int32 x = ; }"),
            Err(SchemaErrorKind::Syntax { .. })
        ));
        assert!(matches!(
            Schema::parse("syntax = \"proto3\"; message A { int32 x = 1;"),
            Err(SchemaErrorKind::Syntax { .. })
        ));
    }

    #[test]
    fn json_names_follow_protobuf() {
        assert_eq!(json_name("inner_object"), "innerObject");
        assert_eq!(json_name("requestId"), "requestId");
        assert_eq!(json_name("a__b_"), "aB");
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let mut text = String::from("syntax = \"proto3\";");
        for i in 0..200 {
            text.push_str(&format!("message M{i} {{"));
        }
        text.push_str(&"}".repeat(200));
        assert_eq!(Schema::parse(&text), Err(SchemaErrorKind::TooLarge));
    }
}
