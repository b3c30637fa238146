//! Classification of a handler's arguments (context or body) and return type (how to publish).
//!
//! The macro only sees syntax. Extractors are recognised by the written type: the last path
//! segment of a framework extractor (`Key`, `Headers`, `State<T>`, ...), an argument attribute
//! (`#[header("name")]`, `#[context]`, `#[body]`), or else the body. The body's codec and the
//! return value's encoding are chosen from the written type where it is plain (`String`,
//! `Vec<u8>`, `Result<..>`, ...); anything else goes through the runtime's type probes
//! (`faststream_core`'s `probe` module), which decide by the type itself, so aliases behave like
//! the types they name.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, Ident, LitStr, Pat, PathArguments, ReturnType, Type};

use crate::args::Errors;

/// Extractors recognised by the last segment of their type path.
const EXTRACTORS: &[&str] = &[
    "Key",
    "Headers",
    "Topic",
    "Partition",
    "Offset",
    "Timestamp",
    "Message",
    "State",
    "Publisher",
    "Control",
    "CorrelationId",
    "Acker",
];

/// What one argument is.
pub(crate) enum ArgKind {
    /// Built from the message or the app context through `FromMessage`.
    Context,
    /// One header, by name.
    Header(LitStr),
    /// (Part of) the payload.
    Body,
}

pub(crate) struct Arg {
    pub(crate) kind: ArgKind,
    pub(crate) ty: Type,
    /// The binding name, needed for the field name when there are several body arguments.
    pub(crate) name: Option<Ident>,
    pub(crate) span: Span,
}

/// How the body arguments are decoded.
pub(crate) enum BodyCodec {
    /// UTF-8 text (`String`).
    Text,
    /// Raw bytes (`Vec<u8>`, `Bytes`).
    Raw,
    /// JSON through serde.
    Json,
}

pub(crate) fn body_codec(ty: &Type) -> BodyCodec {
    match last_ident(ty).as_deref() {
        Some("String") => BodyCodec::Text,
        Some("Bytes") => BodyCodec::Raw,
        Some("Vec") if first_generic(ty).is_some_and(|t| is_ident(t, "u8")) => BodyCodec::Raw,
        _ => BodyCodec::Json,
    }
}

/// Reads the arguments, stripping our argument attributes from the function as written.
pub(crate) fn classify_args(
    inputs: &mut syn::punctuated::Punctuated<FnArg, syn::Token![,]>,
    errors: &mut Errors,
) -> Vec<Arg> {
    let mut out = Vec::new();
    for input in inputs.iter_mut() {
        let pat_type = match input {
            FnArg::Receiver(recv) => {
                errors.error(
                    recv.span(),
                    "a handler cannot take `self`: use a free `async fn` (share data with `State<T>`)",
                );
                continue;
            }
            FnArg::Typed(pt) => pt,
        };
        let mut forced: Option<ArgKind> = None;
        let mut keep = Vec::new();
        for attr in pat_type.attrs.drain(..) {
            let name = attr.path().get_ident().map(|i| i.to_string());
            let kind = match name.as_deref() {
                Some("header") => match attr.parse_args::<LitStr>() {
                    Ok(lit) if !lit.value().is_empty() => Some(ArgKind::Header(lit)),
                    Ok(lit) => {
                        errors.error(lit.span(), "header name must not be empty");
                        None
                    }
                    Err(_) => {
                        errors.error(
                            attr.span(),
                            "expected a header name: #[header(\"x-request-id\")]",
                        );
                        None
                    }
                },
                Some("context") => Some(ArgKind::Context),
                Some("body") => Some(ArgKind::Body),
                _ => {
                    keep.push(attr);
                    continue;
                }
            };
            if forced.is_some() {
                errors.error(
                    attr.span(),
                    "an argument takes at most one of #[header], #[context], #[body]",
                );
            }
            if kind.is_some() {
                forced = kind;
            }
        }
        pat_type.attrs = keep;
        let ty = (*pat_type.ty).clone();
        if let Type::Reference(r) = &ty {
            errors.error(
                r.span(),
                "handler arguments must be owned types (the message outlives no borrow): drop the `&`",
            );
            continue;
        }
        if matches!(&ty, Type::ImplTrait(_)) {
            errors.error(
                ty.span(),
                "`impl Trait` arguments are not supported in handlers",
            );
            continue;
        }
        let kind = forced.unwrap_or_else(|| match last_ident(&ty) {
            Some(name) if EXTRACTORS.contains(&name.as_str()) => ArgKind::Context,
            _ => ArgKind::Body,
        });
        let name = match &*pat_type.pat {
            Pat::Ident(p) => Some(p.ident.clone()),
            _ => None,
        };
        out.push(Arg {
            kind,
            span: ty.span(),
            ty,
            name,
        });
    }
    out
}

/// The inner type of `State<T>`, if the argument is written that way.
pub(crate) fn state_inner(ty: &Type) -> Option<&Type> {
    if last_ident(ty).as_deref() == Some("State") {
        first_generic(ty)
    } else {
        None
    }
}

/// How the return value is published.
pub(crate) enum Shape {
    /// Nothing to publish.
    Unit,
    /// `String`, `&str`: text/plain.
    Text,
    /// `Vec<u8>`, `Bytes`: raw.
    Raw,
    /// Anything else: JSON (must implement `Serialize`).
    Json(Box<Type>),
    Option(Box<Shape>),
    Result(Box<Shape>),
    Response(Box<Shape>),
    /// A batch handler's `Vec<T>`: each element is its own message.
    List(Box<Shape>),
}

impl Shape {
    /// Whether a value of this shape can ever be published.
    pub(crate) fn publishes(&self) -> bool {
        match self {
            Shape::Unit => false,
            Shape::Text | Shape::Raw | Shape::Json(_) => true,
            Shape::Option(s) | Shape::Result(s) | Shape::Response(s) | Shape::List(s) => {
                s.publishes()
            }
        }
    }
}

pub(crate) fn return_shape(ret: &ReturnType) -> Shape {
    match ret {
        ReturnType::Default => Shape::Unit,
        ReturnType::Type(_, ty) => type_shape(ty),
    }
}

/// How a batch handler's return value is published: as [`return_shape`], except that a
/// `Vec<T>` (not `Vec<u8>`), also inside `Option` or `Result`, is a list of messages.
pub(crate) fn batch_return_shape(ret: &ReturnType) -> Shape {
    match ret {
        ReturnType::Default => Shape::Unit,
        ReturnType::Type(_, ty) => batch_type_shape(ty),
    }
}

fn batch_type_shape(ty: &Type) -> Shape {
    if let Type::Paren(p) = ty {
        return batch_type_shape(&p.elem);
    }
    let inner = first_generic(ty);
    match (last_ident(ty).as_deref(), inner) {
        (Some("Vec"), Some(t)) if !is_ident(t, "u8") => Shape::List(Box::new(type_shape(t))),
        (Some("Option"), Some(t)) => Shape::Option(Box::new(batch_type_shape(t))),
        (Some("Result"), Some(t)) => Shape::Result(Box::new(batch_type_shape(t))),
        _ => type_shape(ty),
    }
}

/// The element type of a batch handler's `Vec<T>` argument.
pub(crate) fn batch_element(ty: &Type) -> Option<&Type> {
    match (last_ident(ty).as_deref(), first_generic(ty)) {
        (Some("Vec"), Some(t)) if !is_ident(t, "u8") => Some(t),
        _ => None,
    }
}

/// Whether the type is written as an `Option` (an optional JSON field).
pub(crate) fn is_option(ty: &Type) -> bool {
    last_ident(ty).as_deref() == Some("Option")
}

/// Whether the type is written as the framework's `Message`.
pub(crate) fn is_message(ty: &Type) -> bool {
    last_ident(ty).as_deref() == Some("Message")
}

/// The per-message extractor a type names, if any (not available to batch handlers).
pub(crate) fn per_message_extractor(ty: &Type) -> Option<String> {
    last_ident(ty).filter(|name| {
        matches!(
            name.as_str(),
            "Key"
                | "Headers"
                | "Topic"
                | "Partition"
                | "Offset"
                | "Timestamp"
                | "Message"
                | "Acker"
        )
    })
}

fn type_shape(ty: &Type) -> Shape {
    match ty {
        Type::Tuple(t) if t.elems.is_empty() => return Shape::Unit,
        Type::Paren(p) => return type_shape(&p.elem),
        Type::Reference(r) if is_ident(&r.elem, "str") => return Shape::Text,
        _ => {}
    }
    let json = || Shape::Json(Box::new(ty.clone()));
    let wrap = |f: fn(Box<Shape>) -> Shape| {
        first_generic(ty).map_or_else(json, |t| f(Box::new(type_shape(t))))
    };
    match last_ident(ty).as_deref() {
        Some("String") => Shape::Text,
        Some("Bytes") => Shape::Raw,
        Some("Vec") if first_generic(ty).is_some_and(|t| is_ident(t, "u8")) => Shape::Raw,
        Some("Option") => wrap(Shape::Option),
        Some("Result") => wrap(Shape::Result),
        Some("Response") => wrap(Shape::Response),
        _ => json(),
    }
}

fn last_ident(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last().map(|s| s.ident.to_string()),
        Type::Group(g) => last_ident(&g.elem),
        _ => None,
    }
}

fn first_generic(ty: &Type) -> Option<&Type> {
    let Type::Path(p) = ty else { return None };
    let PathArguments::AngleBracketed(args) = &p.path.segments.last()?.arguments else {
        return None;
    };
    args.args.iter().find_map(|a| match a {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    })
}

fn is_ident(ty: &Type, name: &str) -> bool {
    matches!(ty, Type::Path(p) if p.qself.is_none() && p.path.is_ident(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    fn shape_of(ret: ReturnType) -> Shape {
        return_shape(&ret)
    }

    #[test]
    fn return_shapes() {
        assert!(matches!(shape_of(parse_quote!()), Shape::Unit));
        assert!(matches!(shape_of(parse_quote!(-> ())), Shape::Unit));
        assert!(matches!(shape_of(parse_quote!(-> String)), Shape::Text));
        assert!(matches!(
            shape_of(parse_quote!(-> &'static str)),
            Shape::Text
        ));
        assert!(matches!(shape_of(parse_quote!(-> Vec<u8>)), Shape::Raw));
        assert!(matches!(
            shape_of(parse_quote!(-> bytes::Bytes)),
            Shape::Raw
        ));
        assert!(matches!(
            shape_of(parse_quote!(-> Vec<i32>)),
            Shape::Json(_)
        ));
        assert!(matches!(shape_of(parse_quote!(-> User)), Shape::Json(_)));
        let s = shape_of(parse_quote!(-> Result<Option<String>, E>));
        assert!(
            matches!(s, Shape::Result(ref o) if matches!(**o, Shape::Option(ref t) if matches!(**t, Shape::Text)))
        );
        assert!(!shape_of(parse_quote!(-> Result<(), E>)).publishes());
        assert!(shape_of(parse_quote!(-> Response<User>)).publishes());
    }

    #[test]
    fn body_codecs() {
        assert!(matches!(body_codec(&parse_quote!(String)), BodyCodec::Text));
        assert!(matches!(body_codec(&parse_quote!(Vec<u8>)), BodyCodec::Raw));
        assert!(matches!(
            body_codec(&parse_quote!(bytes::Bytes)),
            BodyCodec::Raw
        ));
        assert!(matches!(body_codec(&parse_quote!(i64)), BodyCodec::Json));
        assert!(matches!(
            body_codec(&parse_quote!(Vec<String>)),
            BodyCodec::Json
        ));
    }

    #[test]
    fn arguments_are_classified_by_type_and_attribute() {
        let mut f: syn::ItemFn = parse_quote! {
            async fn h(k: Key, #[header("x-id")] id: String, s: State<App>, #[context] m: Mine, #[body] key: Key, user: String) {}
        };
        let mut errors = Errors::default();
        let args = classify_args(&mut f.sig.inputs, &mut errors);
        errors.finish().unwrap();
        let kinds: Vec<&str> = args
            .iter()
            .map(|a| match a.kind {
                ArgKind::Context => "ctx",
                ArgKind::Header(_) => "header",
                ArgKind::Body => "body",
            })
            .collect();
        assert_eq!(kinds, ["ctx", "header", "ctx", "ctx", "body", "body"]);
        assert!(state_inner(&args[2].ty).is_some());
        // Our argument attributes are stripped from the function as written.
        assert!(f.sig.inputs.iter().all(|a| match a {
            FnArg::Typed(t) => t.attrs.is_empty(),
            FnArg::Receiver(_) => true,
        }));
    }
}
