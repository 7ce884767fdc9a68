//! A small, bounded XML tree for status documents.
//!
//! Refuses what a status document never needs and an attacker might use: a
//! DTD (and with it entity definitions), references to unknown entities, more
//! than [`MAX_DEPTH`] levels or [`MAX_ELEMENTS`] elements.

use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

use super::ParseError;

/// Icecast's documents are three levels deep; allow some slack, not a stack overflow.
const MAX_DEPTH: usize = 16;
/// More elements than any real server's status (1 MiB of XML holds fewer).
const MAX_ELEMENTS: usize = 200_000;

/// An element with its attributes, text and children.
#[derive(Debug, Default)]
pub(crate) struct Element {
    pub(crate) name: String,
    pub(super) attributes: Vec<(String, String)>,
    pub(crate) text: String,
    pub(crate) children: Vec<Element>,
}

impl Element {
    /// The value of attribute `name`.
    pub(super) fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The text of the first child named `name`.
    pub(super) fn child_text(&self, name: &str) -> Option<&str> {
        self.children
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.text.as_str())
    }
}

/// Parses a whole document and returns its root element.
pub(super) fn parse(text: &str) -> Result<Element, ParseError> {
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut elements = 0usize;
    let err = |msg: String| ParseError::Xml(msg);
    loop {
        let position = reader.buffer_position();
        let event = reader
            .read_event()
            .map_err(|e| err(format!("{e} (at byte {position})")))?;
        match event {
            Event::DocType(_) => return Err(err("a DTD is not allowed".into())),
            Event::Start(_) | Event::Empty(_) if root.is_some() => {
                return Err(err("content after the root element".into()));
            }
            Event::Start(start) => {
                elements += 1;
                if stack.len() >= MAX_DEPTH || elements > MAX_ELEMENTS {
                    return Err(err("document too deep or too large".into()));
                }
                stack.push(element(&start)?);
            }
            Event::Empty(start) => {
                elements += 1;
                if elements > MAX_ELEMENTS {
                    return Err(err("document too large".into()));
                }
                let element = element(&start)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => root = Some(element),
                }
            }
            Event::End(end) => {
                let element = stack
                    .pop()
                    .ok_or_else(|| err("unexpected closing tag".into()))?;
                if end.name().0 != element.name {
                    return Err(err(format!(
                        "<{}> closed by </{}>",
                        element.name,
                        end.name().0
                    )));
                }
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => root = Some(element),
                }
            }
            Event::Text(t) => {
                if let Some(current) = stack.last_mut() {
                    current.text.push_str(&t.xml10_content());
                }
            }
            Event::CData(t) => {
                if let Some(current) = stack.last_mut() {
                    current.text.push_str(&t.xml10_content());
                }
            }
            Event::GeneralRef(r) => {
                let name: &str = &r;
                let resolved = resolve_reference(name)
                    .ok_or_else(|| err(format!("entity &{name}; is not allowed")))?;
                if let Some(current) = stack.last_mut() {
                    current.text.push(resolved);
                }
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(err(
            "the document ends before its elements are closed".into()
        ));
    }
    root.ok_or_else(|| err("no root element".into()))
}

fn element(start: &BytesStart<'_>) -> Result<Element, ParseError> {
    let name = start.name().0.to_owned();
    let mut attributes = Vec::new();
    for attribute in start.attributes() {
        let attribute =
            attribute.map_err(|e| ParseError::Xml(format!("attribute of <{name}>: {e}")))?;
        let key = attribute.key.0.to_owned();
        let value = attribute
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|e| ParseError::Xml(format!("attribute {key} of <{name}>: {e}")))?
            .into_owned();
        attributes.push((key, value));
    }
    Ok(Element {
        name,
        attributes,
        ..Element::default()
    })
}

/// The five predefined entities and character references; nothing else.
fn resolve_reference(name: &str) -> Option<char> {
    match name {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        _ => {
            let number = name.strip_prefix('#')?;
            let code = match number.strip_prefix('x') {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => number.parse().ok()?,
            };
            char::from_u32(code)
        }
    }
}
