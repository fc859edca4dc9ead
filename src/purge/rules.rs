//! Declarative invalidation rules: route templates, tag and key templates, and the rules that
//! tie them to requests ([`Rule`]) and to domain events ([`EventRule`]).
//!
//! Templates are parsed when a rule is added to its layer or bus, so a typo is an error at
//! start-up ([`RuleError`]), never a panic or a silent no-op at request time.

use std::collections::HashMap;
use std::fmt;

use http::Method;

/// Why a rule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    /// The route template is malformed (not starting with `/`, an unclosed `{`, a parameter
    /// that is not a whole segment, a `{*wildcard}` that is not last, a repeated name...).
    #[error("invalid route template {template:?}: {reason}")]
    Route {
        /// The template as given.
        template: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A tag or key template is malformed (an unclosed `{`, an empty `{}`, a stray `}`).
    #[error("invalid template {template:?}: {reason}")]
    Template {
        /// The template as given.
        template: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A tag or key template names a parameter the route does not have.
    #[error("template {template:?} uses {{{name}}}, which route {route:?} does not define")]
    UnknownParam {
        /// The tag or key template.
        template: String,
        /// The unknown parameter.
        name: String,
        /// The rule's route.
        route: String,
    },
    /// The rule matches no method, or names neither tags nor keys.
    #[error("rule {0:?} matches no method or purges nothing")]
    Empty(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    Wildcard(String),
}

/// A parsed route template in axum's syntax: `/products/{id}`, `/files/{*rest}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    source: String,
    segments: Vec<Segment>,
}

impl Route {
    pub(crate) fn parse(template: &str) -> Result<Route, RuleError> {
        let error = |reason| RuleError::Route {
            template: template.to_owned(),
            reason,
        };
        let Some(rest) = template.strip_prefix('/') else {
            return Err(error("must start with '/'"));
        };
        let mut segments = Vec::new();
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        let count = parts.len();
        for (i, part) in parts.into_iter().enumerate() {
            let segment = if let Some(inner) = part.strip_prefix('{') {
                let Some(name) = inner.strip_suffix('}') else {
                    return Err(error("a parameter must be a whole segment: {name}"));
                };
                let (wildcard, name) = match name.strip_prefix('*') {
                    Some(name) => (true, name),
                    None => (false, name),
                };
                if !is_name(name) {
                    return Err(error(
                        "parameter names are letters, digits and '_', not empty",
                    ));
                }
                if wildcard {
                    if i + 1 != count {
                        return Err(error("a {*wildcard} must be the last segment"));
                    }
                    Segment::Wildcard(name.to_owned())
                } else {
                    Segment::Param(name.to_owned())
                }
            } else {
                if part.contains(['{', '}']) {
                    return Err(error("a parameter must be a whole segment: {name}"));
                }
                if part.is_empty() && i + 1 != count {
                    return Err(error("empty segment (`//`)"));
                }
                Segment::Literal(part.to_owned())
            };
            if let Segment::Param(name) | Segment::Wildcard(name) = &segment
                && segments
                    .iter()
                    .any(|s| matches!(s, Segment::Param(n) | Segment::Wildcard(n) if n == name))
            {
                return Err(error("a parameter name is used twice"));
            }
            segments.push(segment);
        }
        Ok(Route {
            source: template.to_owned(),
            segments,
        })
    }

    fn has_param(&self, name: &str) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Param(n) | Segment::Wildcard(n) if n == name))
    }

    /// The parameters of `path` (percent-decoded, as axum's `Path` gives them), or `None` if
    /// the path does not match.
    pub(crate) fn matches(&self, path: &str) -> Option<HashMap<String, String>> {
        let rest = path.strip_prefix('/')?;
        let mut params = HashMap::new();
        let mut parts = if rest.is_empty() { None } else { Some(rest) };
        for segment in &self.segments {
            if let Segment::Wildcard(name) = segment {
                // axum's `{*rest}` needs at least one character.
                let value = parts.take().filter(|v| !v.is_empty())?;
                params.insert(name.clone(), percent_decode(value)?);
                return Some(params);
            }
            let current = parts?;
            let (part, next) = match current.split_once('/') {
                Some((part, next)) => (part, Some(next)),
                None => (current, None),
            };
            parts = next;
            match segment {
                Segment::Literal(literal) => {
                    if part != literal {
                        return None;
                    }
                }
                Segment::Param(name) => {
                    if part.is_empty() {
                        return None;
                    }
                    params.insert(name.clone(), percent_decode(part)?);
                }
                Segment::Wildcard(_) => unreachable!("handled above"),
            }
        }
        parts.is_none().then_some(params)
    }
}

fn is_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Decodes `%XX` escapes; `None` for a malformed escape or a result that is not UTF-8 (such a
/// path matches no rule, as axum rejects it).
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(String),
}

/// A tag or key template: text with `{name}` placeholders (`{{` and `}}` for literal braces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    source: String,
    pieces: Vec<Piece>,
}

impl Template {
    pub(crate) fn parse(template: &str) -> Result<Template, RuleError> {
        let error = |reason| RuleError::Template {
            template: template.to_owned(),
            reason,
        };
        if template.is_empty() {
            return Err(error("empty"));
        }
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = template.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(error("unclosed '{'")),
                        }
                    }
                    if !is_name(&name) {
                        return Err(error(
                            "placeholder names are letters, digits and '_', not empty",
                        ));
                    }
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Field(name));
                }
                '}' => return Err(error("stray '}' (write '}}' for a literal one)")),
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Template {
            source: template.to_owned(),
            pieces,
        })
    }

    fn fields(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Field(name) => Some(name.as_str()),
            Piece::Text(_) => None,
        })
    }

    /// The template filled from `lookup`; `Err(name)` names the first missing field.
    pub(crate) fn render<F>(&self, mut lookup: F) -> Result<String, &str>
    where
        F: FnMut(&str) -> Option<String>,
    {
        let mut out = String::with_capacity(self.source.len() + 16);
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Field(name) => out.push_str(&lookup(name).ok_or(name.as_str())?),
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// A declarative invalidation rule: requests with one of these methods on this route, answered
/// with success, purge these tags and keys.
///
/// Tags and keys may use the route's parameters: with route `/products/{id}`, the tag
/// `product:{id}` becomes `product:42` for `PUT /products/42`. Routes use axum's syntax:
/// `{name}` for one whole segment, `{*name}` for the rest of the path (last segment only);
/// parameter values are percent-decoded. `{{` and `}}` are literal braces in tags and keys.
///
/// A rule is checked when it is added with [`InvalidateLayer::rule`](super::InvalidateLayer::rule):
/// a malformed route or template, or a placeholder the route does not define, is a
/// [`RuleError`] then.
///
/// ```
/// use http::Method;
/// use tower_strata::purge::Rule;
///
/// let rule = Rule::on([Method::PUT, Method::PATCH, Method::DELETE], "/products/{id}")
///     .purge_tags(["product:{id}", "products"]);
/// # let _ = rule;
/// ```
#[derive(Debug, Clone)]
pub struct Rule {
    pub(crate) methods: Vec<Method>,
    pub(crate) route: String,
    pub(crate) tags: Vec<String>,
    pub(crate) keys: Vec<String>,
}

impl Rule {
    /// A rule for requests with any of `methods` whose path matches `route`.
    pub fn on<I: IntoIterator<Item = Method>>(methods: I, route: impl Into<String>) -> Rule {
        Rule {
            methods: methods.into_iter().collect(),
            route: route.into(),
            tags: Vec::new(),
            keys: Vec::new(),
        }
    }

    setters! {
        /// Adds tags to purge (templates over the route's parameters).
        fn purge_tags(tags: impl IntoIterator<Item = impl Into<String>>) => extend tags;

        /// Adds store keys to purge (templates over the route's parameters).
        fn purge_keys(keys: impl IntoIterator<Item = impl Into<String>>) => extend keys;
    }

    pub(crate) fn compile(self) -> Result<CompiledRule, RuleError> {
        if self.methods.is_empty() || (self.tags.is_empty() && self.keys.is_empty()) {
            return Err(RuleError::Empty(self.route));
        }
        let route = Route::parse(&self.route)?;
        let compile = |templates: &[String]| -> Result<Vec<Template>, RuleError> {
            templates
                .iter()
                .map(|source| {
                    let template = Template::parse(source)?;
                    if let Some(name) = template.fields().find(|name| !route.has_param(name)) {
                        return Err(RuleError::UnknownParam {
                            template: source.clone(),
                            name: name.to_owned(),
                            route: route.source.clone(),
                        });
                    }
                    Ok(template)
                })
                .collect()
        };
        Ok(CompiledRule {
            tags: compile(&self.tags)?,
            keys: compile(&self.keys)?,
            methods: self.methods,
            route,
        })
    }
}

/// What a rule (or several) asks to purge for one request or event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Targets {
    pub tags: Vec<String>,
    pub keys: Vec<String>,
}

impl Targets {
    pub(crate) fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.keys.is_empty()
    }

    pub(crate) fn add_tag(&mut self, tag: String) {
        if !self.tags.contains(&tag) {
            self.tags.push(tag);
        }
    }

    pub(crate) fn add_key(&mut self, key: String) {
        if !self.keys.contains(&key) {
            self.keys.push(key);
        }
    }
}

/// A rule checked and ready to match.
#[derive(Debug, Clone)]
pub(crate) struct CompiledRule {
    methods: Vec<Method>,
    route: Route,
    tags: Vec<Template>,
    keys: Vec<Template>,
}

impl CompiledRule {
    /// Adds this rule's tags and keys for `method path` to `targets`; whether it matched.
    pub(crate) fn apply(&self, method: &Method, path: &str, targets: &mut Targets) -> bool {
        if !self.methods.contains(method) {
            return false;
        }
        let Some(params) = self.route.matches(path) else {
            return false;
        };
        let lookup = |name: &str| params.get(name).cloned();
        // Every placeholder was checked against the route, so rendering cannot miss.
        for tag in &self.tags {
            if let Ok(tag) = tag.render(lookup) {
                targets.add_tag(tag);
            }
        }
        for key in &self.keys {
            if let Ok(key) = key.render(lookup) {
                targets.add_key(key);
            }
        }
        true
    }
}

/// A rule mapping a domain event published on an
/// [`InvalidationBus`](super::InvalidationBus) to purges.
///
/// Placeholders in tags and keys are filled from the event payload's top-level fields: strings
/// as they are, numbers and booleans as JSON writes them. When a field is missing (or is
/// `null`, an object or an array) that rule is skipped for the event, with a warning, and
/// counted in [`InvalidateStats::skipped`](super::InvalidateStats::skipped); other rules for
/// the event still apply.
///
/// ```
/// use tower_strata::purge::EventRule;
///
/// let rule = EventRule::on("product.updated").purge_tags(["product:{id}", "products"]);
/// # let _ = rule;
/// ```
#[derive(Debug, Clone)]
pub struct EventRule {
    pub(crate) event: String,
    pub(crate) tags: Vec<String>,
    pub(crate) keys: Vec<String>,
}

impl EventRule {
    /// A rule for events named `event` (matched exactly).
    pub fn on(event: impl Into<String>) -> EventRule {
        EventRule {
            event: event.into(),
            tags: Vec::new(),
            keys: Vec::new(),
        }
    }

    setters! {
        /// Adds tags to purge (templates over the payload's fields).
        fn purge_tags(tags: impl IntoIterator<Item = impl Into<String>>) => extend tags;

        /// Adds store keys to purge (templates over the payload's fields).
        fn purge_keys(keys: impl IntoIterator<Item = impl Into<String>>) => extend keys;
    }

    pub(crate) fn compile(self) -> Result<CompiledEventRule, RuleError> {
        if self.event.is_empty() || (self.tags.is_empty() && self.keys.is_empty()) {
            return Err(RuleError::Empty(self.event));
        }
        let compile = |templates: &[String]| -> Result<Vec<Template>, RuleError> {
            templates.iter().map(|t| Template::parse(t)).collect()
        };
        Ok(CompiledEventRule {
            tags: compile(&self.tags)?,
            keys: compile(&self.keys)?,
            event: self.event,
        })
    }
}

/// An event rule checked and ready to apply.
#[derive(Debug, Clone)]
pub(crate) struct CompiledEventRule {
    pub event: String,
    tags: Vec<Template>,
    keys: Vec<Template>,
}

impl CompiledEventRule {
    /// Adds this rule's tags and keys for `payload` to `targets`, or names the first missing
    /// field (and adds nothing).
    pub(crate) fn apply<'a>(
        &'a self,
        payload: &serde_json::Value,
        targets: &mut Targets,
    ) -> Result<(), &'a str> {
        let lookup = |name: &str| match payload.get(name)? {
            serde_json::Value::String(s) => Some(s.clone()),
            v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => Some(v.to_string()),
            _ => None,
        };
        let tags = self
            .tags
            .iter()
            .map(|t| t.render(lookup))
            .collect::<Result<Vec<_>, _>>()?;
        let keys = self
            .keys
            .iter()
            .map(|t| t.render(lookup))
            .collect::<Result<Vec<_>, _>>()?;
        tags.into_iter().for_each(|t| targets.add_tag(t));
        keys.into_iter().for_each(|k| targets.add_key(k));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(route: &str, path: &str) -> Option<Vec<(String, String)>> {
        let mut params: Vec<_> = Route::parse(route)
            .unwrap()
            .matches(path)?
            .into_iter()
            .collect();
        params.sort();
        Some(params)
    }

    fn p(pairs: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
    }

    #[test]
    fn routes_match_like_axum() {
        assert_eq!(params("/products/{id}", "/products/42"), p(&[("id", "42")]));
        assert_eq!(params("/products/{id}", "/products/42/x"), None);
        assert_eq!(params("/products/{id}", "/products/"), None);
        assert_eq!(params("/products/{id}", "/products"), None);
        assert_eq!(params("/products/{id}", "/product/42"), None);
        assert_eq!(
            params("/a/{x}/b/{y}", "/a/1/b/two"),
            p(&[("x", "1"), ("y", "two")])
        );
        assert_eq!(
            params("/files/{*rest}", "/files/a/b%20c"),
            p(&[("rest", "a/b c")])
        );
        assert_eq!(params("/files/{*rest}", "/files/"), None);
        assert_eq!(params("/files/{*rest}", "/files"), None);
        assert_eq!(params("/", "/"), p(&[]));
        assert_eq!(params("/", "/x"), None);
        assert_eq!(params("/x/", "/x/"), p(&[]));
        assert_eq!(params("/x/", "/x"), None);
        assert_eq!(params("/p/{id}", "/p/%E2%82%AC"), p(&[("id", "€")]));
        assert_eq!(params("/p/{id}", "/p/%zz"), None);
    }

    #[test]
    fn malformed_routes_are_errors() {
        for bad in [
            "products/{id}",
            "/products/{id",
            "/products/id}",
            "/products/x{id}",
            "/products/{}",
            "/products/{a-b}",
            "/files/{*rest}/x",
            "/a/{id}/b/{id}",
            "/a//b",
        ] {
            assert!(
                matches!(Route::parse(bad), Err(RuleError::Route { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn templates_render_and_escape() {
        let t = Template::parse("product:{id}:{{v}}").unwrap();
        assert_eq!(
            t.render(|n| (n == "id").then(|| "7".to_owned())).unwrap(),
            "product:7:{v}"
        );
        assert_eq!(t.render(|_| None), Err("id"));
        for bad in ["", "a{", "a}", "{}", "{a b}", "x{id"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rules_are_checked_when_compiled() {
        let rule = Rule::on([Method::PUT], "/products/{id}").purge_tags(["product:{pid}"]);
        assert!(matches!(
            rule.compile(),
            Err(RuleError::UnknownParam { name, .. }) if name == "pid"
        ));
        assert!(matches!(
            Rule::on([Method::PUT], "/p").compile(),
            Err(RuleError::Empty(_))
        ));
        assert!(matches!(
            Rule::on([], "/p").purge_tags(["x"]).compile(),
            Err(RuleError::Empty(_))
        ));
        let rule = Rule::on([Method::PUT, Method::DELETE], "/products/{id}")
            .purge_tags(["product:{id}", "products"])
            .purge_keys(["k:{id}"])
            .compile()
            .unwrap();
        let mut targets = Targets::default();
        assert!(!rule.apply(&Method::GET, "/products/9", &mut targets));
        assert!(rule.apply(&Method::DELETE, "/products/9", &mut targets));
        assert_eq!(targets.tags, ["product:9", "products"]);
        assert_eq!(targets.keys, ["k:9"]);
    }

    #[test]
    fn event_rules_fill_from_payload() {
        let rule = EventRule::on("product.updated")
            .purge_tags(["product:{id}", "shop:{shop}", "flag:{on}"])
            .compile()
            .unwrap();
        let mut targets = Targets::default();
        let payload = serde_json::json!({"id": 42, "shop": "eu", "on": true});
        rule.apply(&payload, &mut targets).unwrap();
        assert_eq!(targets.tags, ["product:42", "shop:eu", "flag:true"]);
        let mut targets = Targets::default();
        assert_eq!(
            rule.apply(&serde_json::json!({"id": 1, "on": false}), &mut targets),
            Err("shop")
        );
        assert!(
            targets.is_empty(),
            "a rule with a missing field adds nothing"
        );
        assert_eq!(
            rule.apply(&serde_json::json!({"id": null}), &mut targets),
            Err("id")
        );
        assert!(EventRule::on("").purge_tags(["x"]).compile().is_err());
        assert!(EventRule::on("e").purge_tags(["{"]).compile().is_err());
    }
}
