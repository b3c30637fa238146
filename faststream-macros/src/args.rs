//! Parsing of `#[subscriber(...)]` and `#[publisher(...)]` arguments.
//!
//! Both take leading topic literals, then `key = value` options. Every problem is collected
//! before giving up, so one compile run reports all of them.

use proc_macro2::{Span, TokenStream};
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{Ident, LitStr, Token};

/// Which attribute is being read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum AttrKind {
    Subscriber,
    Publisher,
}

impl AttrKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            AttrKind::Subscriber => "subscriber",
            AttrKind::Publisher => "publisher",
        }
    }

    /// The options this attribute accepts, in the order the error message lists them.
    fn valid_keys(self) -> Vec<&'static str> {
        match self {
            AttrKind::Subscriber => CONSUMER_KEYS
                .iter()
                .chain(POLICY_KEYS)
                .chain(BATCH_KEYS)
                .chain(&["crate"])
                .copied()
                .collect(),
            AttrKind::Publisher => Vec::new(),
        }
    }
}

/// Consumer options of one `#[subscriber]`.
const CONSUMER_KEYS: &[&str] = &[
    "pattern",
    "dynamic",
    "group_id",
    "auto_offset_reset",
    "partitions",
    "assignor",
    "group_protocol",
    "session_timeout_ms",
    "heartbeat_interval_ms",
    "rebalance_timeout_ms",
    "commit_interval_ms",
];

/// Batch options: route-wide, like the failure-policy options.
const BATCH_KEYS: &[&str] = &["batch", "max_records", "batch_timeout_ms", "middleware"];

/// `batch = true` and its settings, with the spans errors point at.
#[derive(Default)]
pub(crate) struct BatchArgs {
    /// Where `batch = ...` was written, and its value.
    pub(crate) on: Option<(Span, bool)>,
    pub(crate) max_records: Option<syn::LitInt>,
    pub(crate) timeout_ms: Option<syn::LitInt>,
}

/// Collects errors so every one of them is reported.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, err: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(err),
            None => self.0 = Some(err),
        }
    }

    pub(crate) fn error(&mut self, span: Span, msg: impl std::fmt::Display) {
        self.push(syn::Error::new(span, msg));
    }

    pub(crate) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Where a consumer without a committed offset starts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum OffsetReset {
    Earliest,
    Latest,
}

/// One `#[subscriber(...)]`.
#[derive(Default)]
pub(crate) struct SubscriberArgs {
    pub(crate) topics: Vec<LitStr>,
    /// `pattern = "..."`: every topic whose name matches (checked at compile time).
    pub(crate) pattern: Option<LitStr>,
    /// `dynamic = true`: topics given while the service runs.
    pub(crate) dynamic: bool,
    pub(crate) group_id: Option<LitStr>,
    pub(crate) auto_offset_reset: Option<OffsetReset>,
    pub(crate) partitions: Option<Vec<syn::LitInt>>,
    pub(crate) assignor: Option<LitStr>,
    /// `group_protocol = "classic" | "consumer"`.
    pub(crate) group_protocol: Option<LitStr>,
    /// `(option name, milliseconds)` for the group timing options.
    pub(crate) durations: Vec<(String, syn::LitInt)>,
}

/// Everything the attributes on one function say.
#[derive(Default)]
pub(crate) struct RouteArgs {
    pub(crate) subscribers: Vec<SubscriberArgs>,
    pub(crate) publishers: Vec<LitStr>,
    pub(crate) krate: Option<syn::Path>,
    /// Route-wide failure-policy options: `(name, method tokens)`, each set once per handler.
    pub(crate) policy: Vec<(String, TokenStream)>,
    pub(crate) batch: BatchArgs,
    /// `middleware = [A, m::B]`: statics or consts implementing `Middleware`.
    pub(crate) middlewares: Option<Vec<syn::Path>>,
    /// Every topic name written (subscribed, published, dead-letter): the expansion checks
    /// each against Kafka's rule at compile time (`TopicNameProblem::of`, a `const fn` of the
    /// core, so the rule is written once).
    pub(crate) topic_names: Vec<LitStr>,
}

/// Failure-policy options: route-wide, written in any of the handler's `#[subscriber]`s.
const POLICY_KEYS: &[&str] = &[
    "retry",
    "retry_backoff_ms",
    "retry_max_backoff_ms",
    "dlq",
    "on_failure",
    "timeout_ms",
    "max_message_bytes",
    "ack",
    "concurrency",
    "no_reply",
    "retry_topics",
    "exactly_once",
];

/// One item of an attribute's argument list: a topic literal or `key = value`.
enum Item {
    Topic(LitStr),
    Option { key: Ident, value: syn::Expr },
}

impl Parse for Item {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.peek(LitStr) {
            return Ok(Item::Topic(input.parse()?));
        }
        let key = if input.peek(Token![crate]) {
            let tok: Token![crate] = input.parse()?;
            Ident::new("crate", tok.span)
        } else {
            input.parse::<Ident>().map_err(|e| {
                syn::Error::new(e.span(), "expected a topic string literal or `key = value`")
            })?
        };
        input.parse::<Token![=]>()?;
        let value = input.parse()?;
        Ok(Item::Option { key, value })
    }
}

/// Parses one attribute's tokens into `route`, recording problems in `errors`.
pub(crate) fn parse_into(
    kind: AttrKind,
    attr_span: Span,
    tokens: TokenStream,
    route: &mut RouteArgs,
    errors: &mut Errors,
) {
    let items = match Punctuated::<Item, Token![,]>::parse_terminated.parse2(tokens) {
        Ok(items) => items,
        Err(e) => return errors.push(e),
    };
    let mut topics = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut sub = SubscriberArgs::default();
    for item in items {
        match item {
            Item::Topic(lit) => {
                route.topic_names.push(lit.clone());
                topics.push(lit);
            }
            Item::Option { key, value } => {
                let name = key.to_string();
                if !kind.valid_keys().contains(&name.as_str()) {
                    let valid = kind.valid_keys();
                    let msg = if valid.is_empty() {
                        format!(
                            "unknown option `{name}`: #[{}] takes only a topic",
                            kind.name()
                        )
                    } else {
                        format!(
                            "unknown option `{name}` for #[{}]; valid options are: {}",
                            kind.name(),
                            valid.join(", ")
                        )
                    };
                    errors.error(key.span(), msg);
                    continue;
                }
                if seen.contains(&name) {
                    errors.error(key.span(), format!("duplicate option `{name}`"));
                    continue;
                }
                seen.push(name.clone());
                if let Err(e) = apply_option(&name, &value, &mut sub, route) {
                    errors.push(e);
                }
            }
        }
    }
    match kind {
        AttrKind::Subscriber => {
            if sub.dynamic {
                let given = topics.first().map(LitStr::span);
                let given = given.or(sub.pattern.as_ref().map(LitStr::span));
                let given = given.or(sub.partitions.iter().flatten().next().map(|p| p.span()));
                if let Some(given) = given {
                    errors.error(
                        given,
                        "a `dynamic` subscriber takes its topics while the service runs (`Control::subscribe`): it names no topic, pattern or partitions",
                    );
                }
            } else if topics.is_empty() && sub.pattern.is_none() {
                errors.error(
                    attr_span,
                    "#[subscriber] needs at least one topic: #[subscriber(\"topic\")], or a pattern: #[subscriber(pattern = \"orders\\\\..*\")], or `dynamic = true` to subscribe while the service runs",
                );
            }
            if let (Some(_), Some(group)) = (&sub.partitions, &sub.group_id) {
                errors.error(
                    group.span(),
                    "`partitions` assigns partitions by hand and cannot be combined with `group_id`",
                );
            }
            if let (Some(protocol), None) = (&sub.group_protocol, &sub.group_id) {
                errors.error(
                    protocol.span(),
                    "`group_protocol` is a consumer group's: it needs `group_id = \"...\"`",
                );
            }
            if let (Some(protocol), Some(assignor)) = (&sub.group_protocol, &sub.assignor) {
                let mismatch = match (protocol.value().as_str(), assignor.value().as_str()) {
                    ("classic", "uniform") => Some("`uniform` is an assignor of the consumer group protocol (`group_protocol = \"consumer\"`)".to_owned()),
                    ("consumer", a @ ("roundrobin" | "cooperative-sticky")) => Some(format!("`{a}` is an assignor of the classic group protocol; under `group_protocol = \"consumer\"` the broker assigns with `uniform` or `range`")),
                    _ => None,
                };
                if let Some(msg) = mismatch {
                    errors.error(assignor.span(), msg);
                }
            }
            sub.topics = topics;
            route.subscribers.push(sub);
        }
        AttrKind::Publisher => match topics.len() {
            0 => errors.error(
                attr_span,
                "#[publisher] needs a topic: #[publisher(\"topic\")]",
            ),
            1 => route.publishers.extend(topics),
            _ => errors.error(
                topics[1].span(),
                "#[publisher] takes one topic; stack several #[publisher] attributes to fan out",
            ),
        },
    }
}

/// Checks and records one `key = value` option.
fn apply_option(
    name: &str,
    value: &syn::Expr,
    sub: &mut SubscriberArgs,
    route: &mut RouteArgs,
) -> syn::Result<()> {
    let span = syn::spanned::Spanned::span(value);
    let string = || {
        string_value(value).ok_or_else(|| {
            syn::Error::new(span, format!("option `{name}` expects a string literal"))
        })
    };
    match name {
        "dynamic" => match value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Bool(b),
                ..
            }) => sub.dynamic = b.value,
            _ => {
                return Err(syn::Error::new(
                    span,
                    "option `dynamic` expects `true` or `false`",
                ))
            }
        },
        "pattern" => {
            let lit = string()?;
            // Recorded even when invalid: the subscriber has a pattern, only this one is wrong.
            sub.pattern = Some(lit.clone());
            if let Err(e) = regex_lite::Regex::new(&lit.value()) {
                return Err(syn::Error::new(
                    lit.span(),
                    format!("invalid topic `pattern`: {e}"),
                ));
            }
        }
        "group_id" => {
            let lit = string()?;
            if lit.value().is_empty() {
                return Err(syn::Error::new(lit.span(), "`group_id` must not be empty"));
            }
            sub.group_id = Some(lit);
        }
        "auto_offset_reset" => {
            let lit = string()?;
            sub.auto_offset_reset = Some(match lit.value().as_str() {
                "earliest" => OffsetReset::Earliest,
                "latest" => OffsetReset::Latest,
                other => {
                    return Err(syn::Error::new(
                        lit.span(),
                        format!(
                            "invalid `auto_offset_reset` value \"{other}\": expected \"earliest\" or \"latest\""
                        ),
                    ))
                }
            });
        }
        "assignor" => {
            let lit = string()?;
            if !matches!(
                lit.value().as_str(),
                "range" | "roundrobin" | "cooperative-sticky" | "uniform"
            ) {
                return Err(syn::Error::new(
                    lit.span(),
                    format!(
                        "invalid `assignor` value \"{}\": expected \"range\", \"roundrobin\", \"cooperative-sticky\" (classic protocol) or \"uniform\" (consumer protocol)",
                        lit.value()
                    ),
                ));
            }
            sub.assignor = Some(lit);
        }
        "group_protocol" => {
            let lit = string()?;
            if !matches!(lit.value().as_str(), "classic" | "consumer") {
                return Err(syn::Error::new(
                    lit.span(),
                    format!(
                        "invalid `group_protocol` value \"{}\": expected \"classic\" or \"consumer\"",
                        lit.value()
                    ),
                ));
            }
            sub.group_protocol = Some(lit);
        }
        "crate" => {
            let lit = string()?;
            route.krate = Some(lit.parse::<syn::Path>().map_err(|_| {
                syn::Error::new(lit.span(), "`crate` expects a path such as \"faststream\"")
            })?);
        }
        "batch" => {
            if route.batch.on.is_some() {
                return Err(set_twice(span, name));
            }
            let on = match value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Bool(b),
                    ..
                }) => b.value,
                _ => {
                    return Err(syn::Error::new(
                        span,
                        "option `batch` expects `true` or `false`",
                    ))
                }
            };
            route.batch.on = Some((span, on));
        }
        "middleware" => {
            if route.middlewares.is_some() {
                return Err(set_twice(span, name));
            }
            let syn::Expr::Array(array) = value else {
                return Err(syn::Error::new(
                    span,
                    "option `middleware` expects a list of statics or consts implementing `Middleware`: middleware = [AUDIT]",
                ));
            };
            let mut paths = Vec::new();
            for elem in &array.elems {
                match elem {
                    syn::Expr::Path(p) if p.qself.is_none() => paths.push(p.path.clone()),
                    other => {
                        return Err(syn::Error::new(
                            syn::spanned::Spanned::span(other),
                            "a middleware here is the path of a static or const (`static AUDIT: Audit = Audit;`)",
                        ))
                    }
                }
            }
            route.middlewares = Some(paths);
        }
        "max_records" | "batch_timeout_ms" => {
            let slot = match name {
                "max_records" => &mut route.batch.max_records,
                _ => &mut route.batch.timeout_ms,
            };
            if slot.is_some() {
                return Err(set_twice(span, name));
            }
            match value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Int(i),
                    ..
                }) if i.base10_parse::<u32>().is_ok_and(|v| {
                    v <= i32::MAX as u32 && (v > 0 || name == "batch_timeout_ms")
                }) =>
                {
                    *slot = Some(i.clone());
                }
                _ => {
                    return Err(syn::Error::new(
                        span,
                        match name {
                            "max_records" => "option `max_records` expects a positive whole number",
                            _ => "option `batch_timeout_ms` expects a whole number of milliseconds",
                        },
                    ))
                }
            }
        }
        key if POLICY_KEYS.contains(&key) => {
            if route.policy.iter().any(|(n, _)| n == key) {
                return Err(set_twice(span, key));
            }
            let tokens = policy_value(key, value, span, &string, &mut route.topic_names)?;
            route.policy.push((key.to_owned(), tokens));
        }
        "partitions" => {
            let syn::Expr::Array(array) = value else {
                return Err(syn::Error::new(
                    span,
                    "option `partitions` expects a list of partition numbers: partitions = [0, 1]",
                ));
            };
            let mut parts = Vec::new();
            for elem in &array.elems {
                match elem {
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Int(i),
                        ..
                    }) if i.base10_parse::<i32>().is_ok_and(|p| p >= 0) => {
                        if parts
                            .iter()
                            .any(|p: &syn::LitInt| p.base10_digits() == i.base10_digits())
                        {
                            return Err(syn::Error::new(i.span(), "partition listed twice"));
                        }
                        parts.push(i.clone());
                    }
                    other => {
                        return Err(syn::Error::new(
                            syn::spanned::Spanned::span(other),
                            "a partition is a non-negative integer",
                        ))
                    }
                }
            }
            if parts.is_empty() {
                return Err(syn::Error::new(
                    span,
                    "`partitions` must list at least one partition",
                ));
            }
            sub.partitions = Some(parts);
        }
        _ => {
            // The group timing options: milliseconds as an integer literal.
            let ms = match value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Int(i),
                    ..
                }) if i
                    .base10_parse::<u32>()
                    .is_ok_and(|v| v > 0 && v <= i32::MAX as u32) =>
                {
                    i.clone()
                }
                _ => {
                    return Err(syn::Error::new(
                        span,
                        format!("option `{name}` expects a positive number of milliseconds"),
                    ))
                }
            };
            sub.durations.push((name.to_owned(), ms));
        }
    }
    Ok(())
}

fn set_twice(span: Span, key: &str) -> syn::Error {
    syn::Error::new(
        span,
        format!("`{key}` is set twice for this handler: it applies to the whole handler"),
    )
}

/// The builder-call argument for a failure-policy option, with `__fs` standing for the
/// runtime's private module (the expansion substitutes the real path).
fn policy_value(
    key: &str,
    value: &syn::Expr,
    span: Span,
    string: &dyn Fn() -> syn::Result<LitStr>,
    route_topics: &mut Vec<LitStr>,
) -> syn::Result<TokenStream> {
    use quote::quote;
    let int = |allow_zero: bool| match value {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(i),
            ..
        }) if i.base10_parse::<u32>().is_ok_and(|v| allow_zero || v > 0) => Ok(quote!(#i)),
        _ => Err(syn::Error::new(
            span,
            if allow_zero {
                format!("option `{key}` expects a whole number")
            } else {
                format!("option `{key}` expects a positive whole number")
            },
        )),
    };
    match key {
        "retry" => int(true),
        "retry_backoff_ms"
        | "retry_max_backoff_ms"
        | "timeout_ms"
        | "max_message_bytes"
        | "concurrency" => int(false),
        "dlq" => {
            let lit = string()?;
            route_topics.push(lit.clone());
            Ok(quote!(#lit))
        }
        "on_failure" => {
            let lit = string()?;
            match lit.value().as_str() {
                "skip" => Ok(quote!(__fs::FailureAction::Skip)),
                "stop" => Ok(quote!(__fs::FailureAction::Stop)),
                other => Err(syn::Error::new(
                    lit.span(),
                    format!(
                        "invalid `on_failure` value \"{other}\": expected \"skip\" or \"stop\""
                    ),
                )),
            }
        }
        "retry_topics" => {
            let syn::Expr::Array(array) = value else {
                return Err(syn::Error::new(
                    span,
                    "option `retry_topics` expects a list of topic names, each ending in its delay: retry_topics = [\"orders.retry.30s\", \"orders.retry.10m\"]",
                ));
            };
            let mut topics = Vec::new();
            for elem in &array.elems {
                let Some(lit) = string_value(elem) else {
                    return Err(syn::Error::new(
                        syn::spanned::Spanned::span(elem),
                        "a retry topic is a string literal",
                    ));
                };
                let name = lit.value();
                let Some(ms) = trailing_delay_ms(&name) else {
                    return Err(syn::Error::new(
                        lit.span(),
                        format!("retry topic \"{name}\" does not end in its delay: name it like \"orders.retry.30s\" (a number and ms, s, m or h after the last `.`, `-` or `_`)"),
                    ));
                };
                if topics
                    .iter()
                    .any(|(t, _): &(LitStr, u64)| t.value() == name)
                {
                    return Err(syn::Error::new(lit.span(), "retry topic listed twice"));
                }
                route_topics.push(lit.clone());
                topics.push((lit, ms));
            }
            if topics.is_empty() {
                return Err(syn::Error::new(
                    span,
                    "`retry_topics` must list at least one topic",
                ));
            }
            let pairs = topics.iter().map(|(t, ms)| quote!((#t, #ms)));
            Ok(quote!(&[#(#pairs),*]))
        }
        "no_reply" | "exactly_once" => match value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Bool(b),
                ..
            }) => Ok(quote!(#b)),
            _ => Err(syn::Error::new(
                span,
                format!("option `{key}` expects `true` or `false`"),
            )),
        },
        "ack" => {
            let lit = string()?;
            match lit.value().as_str() {
                "after" => Ok(quote!(__fs::AckMode::AfterProcessing)),
                "first" => Ok(quote!(__fs::AckMode::First)),
                "manual" => Ok(quote!(__fs::AckMode::Manual)),
                other => Err(syn::Error::new(
                    lit.span(),
                    format!("invalid `ack` value \"{other}\": expected \"after\", \"first\" or \"manual\""),
                )),
            }
        }
        _ => unreachable!("every policy key is handled"),
    }
}

/// The delay a retry topic's name ends in (`orders.retry.30s`: 30,000 ms), if it ends in one.
pub(crate) fn trailing_delay_ms(name: &str) -> Option<u64> {
    let last = name.rsplit(['.', '-', '_']).next()?;
    let digits = last.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = last.split_at(digits);
    let n: u64 = number.parse().ok()?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(unit_ms).filter(|ms| *ms > 0)
}

fn string_value(expr: &syn::Expr) -> Option<LitStr> {
    match expr {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(lit),
            ..
        }) => Some(lit.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn parse(kind: AttrKind, tokens: TokenStream) -> (RouteArgs, syn::Result<()>) {
        let mut route = RouteArgs::default();
        let mut errors = Errors::default();
        parse_into(kind, Span::call_site(), tokens, &mut route, &mut errors);
        (route, errors.finish())
    }

    #[test]
    fn retry_topic_names_end_in_their_delay() {
        assert_eq!(trailing_delay_ms("orders.retry.30s"), Some(30_000));
        assert_eq!(trailing_delay_ms("orders-retry-500ms"), Some(500));
        assert_eq!(trailing_delay_ms("orders_retry_10m"), Some(600_000));
        assert_eq!(trailing_delay_ms("o.2h"), Some(7_200_000));
        for bad in [
            "orders.retry",
            "orders.retry.s",
            "orders.retry.0s",
            "orders.retry.5d",
        ] {
            assert_eq!(trailing_delay_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn subscriber_with_options() {
        let (route, res) = parse(
            AttrKind::Subscriber,
            quote!("a", "b", group_id = "g", auto_offset_reset = "earliest"),
        );
        res.unwrap();
        let sub = &route.subscribers[0];
        assert_eq!(sub.topics.len(), 2);
        assert_eq!(sub.group_id.as_ref().unwrap().value(), "g");
        assert_eq!(sub.auto_offset_reset, Some(OffsetReset::Earliest));
    }

    #[test]
    fn all_errors_are_collected() {
        let (_, res) = parse(
            AttrKind::Subscriber,
            quote!(
                "bad topic",
                colour = "x",
                group_id = "g",
                group_id = "h",
                auto_offset_reset = "soon"
            ),
        );
        let msgs: Vec<String> = res
            .unwrap_err()
            .into_iter()
            .map(|e| e.to_string())
            .collect();
        // The topic name is checked by the expansion, at compile time (tests/ui).
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert!(msgs[0].contains("unknown option `colour`"));
        assert!(msgs[0].contains("group_id, auto_offset_reset, partitions, assignor"));
        assert!(msgs[1].contains("duplicate option `group_id`"));
        assert!(msgs[2].contains("\"soon\""));
    }

    #[test]
    fn publisher_takes_exactly_one_topic() {
        let (route, res) = parse(AttrKind::Publisher, quote!("out"));
        res.unwrap();
        assert_eq!(route.publishers[0].value(), "out");
        let (_, res) = parse(AttrKind::Publisher, quote!());
        assert!(res.unwrap_err().to_string().contains("needs a topic"));
        let (_, res) = parse(AttrKind::Publisher, quote!("a", "b"));
        assert!(res.unwrap_err().to_string().contains("takes one topic"));
        let (_, res) = parse(AttrKind::Publisher, quote!("a", key = "k"));
        assert!(res.unwrap_err().to_string().contains("takes only a topic"));
    }

    #[test]
    fn group_and_partition_options() {
        let (route, res) = parse(
            AttrKind::Subscriber,
            quote!(
                "a",
                group_id = "g",
                assignor = "roundrobin",
                session_timeout_ms = 6000,
                commit_interval_ms = 100
            ),
        );
        res.unwrap();
        let sub = &route.subscribers[0];
        assert_eq!(sub.assignor.as_ref().unwrap().value(), "roundrobin");
        assert_eq!(sub.durations.len(), 2);
        let (route, res) = parse(AttrKind::Subscriber, quote!("a", partitions = [0, 2]));
        res.unwrap();
        assert_eq!(route.subscribers[0].partitions.as_ref().unwrap().len(), 2);
        for (tokens, want) in [
            (quote!("a", partitions = [0, 0]), "partition listed twice"),
            (quote!("a", partitions = []), "at least one partition"),
            (quote!("a", partitions = [-1]), "non-negative"),
            (quote!("a", partitions = 3), "expects a list"),
            (
                quote!("a", session_timeout_ms = "6s"),
                "positive number of milliseconds",
            ),
            (quote!("a", assignor = "sticky"), "invalid `assignor` value"),
            (
                quote!("a", partitions = [0], group_id = "g"),
                "cannot be combined",
            ),
            (
                quote!("a", group_protocol = "eager"),
                "invalid `group_protocol` value",
            ),
            (quote!("a", group_protocol = "consumer"), "needs `group_id"),
            (
                quote!(
                    "a",
                    group_id = "g",
                    group_protocol = "consumer",
                    assignor = "roundrobin"
                ),
                "classic group protocol",
            ),
            (
                quote!(
                    "a",
                    group_id = "g",
                    group_protocol = "classic",
                    assignor = "uniform"
                ),
                "consumer group protocol",
            ),
        ] {
            let (_, res) = parse(AttrKind::Subscriber, tokens);
            let err = res.unwrap_err().to_string();
            assert!(err.contains(want), "{err} does not mention {want}");
        }
    }

    #[test]
    fn failure_policy_options() {
        let (route, res) = parse(
            AttrKind::Subscriber,
            quote!(
                "a",
                retry = 0,
                dlq = "a.dlq",
                on_failure = "stop",
                ack = "manual",
                timeout_ms = 50
            ),
        );
        res.unwrap();
        assert_eq!(route.policy.len(), 5);
        for (tokens, want) in [
            (quote!("a", retry = -1), "whole number"),
            (quote!("a", timeout_ms = 0), "positive whole number"),
            (
                quote!("a", on_failure = "explode"),
                "invalid `on_failure` value",
            ),
            (quote!("a", ack = "later"), "invalid `ack` value"),
        ] {
            let (_, res) = parse(AttrKind::Subscriber, tokens);
            let err = res.unwrap_err().to_string();
            assert!(err.contains(want), "{err} does not mention {want}");
        }
    }

    #[test]
    fn option_values_must_be_strings() {
        let (_, res) = parse(AttrKind::Subscriber, quote!("a", group_id = 5));
        assert!(res
            .unwrap_err()
            .to_string()
            .contains("expects a string literal"));
    }
}
