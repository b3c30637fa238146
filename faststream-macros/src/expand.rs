//! The generated tokens: the user's function as written, plus a hidden route descriptor.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{ItemFn, LitStr};

use crate::args::{self, AttrKind, Errors, OffsetReset, RouteArgs};
use crate::signature::{self, ArgKind, BodyCodec, Shape};

/// Entry point shared by both attributes: whichever expands first handles every
/// `#[subscriber]`/`#[publisher]` on the function, so they stack in any order.
pub(crate) fn entry(kind: AttrKind, attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut func: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(_) => {
            let err = syn::Error::new(
                Span::call_site(),
                format!("#[{}] goes on an `async fn`", kind.name()),
            );
            return token_stream_with_error(item, err);
        }
    };
    match expand(kind, attr, &mut func) {
        Ok(tokens) => tokens,
        // `func` has had our attributes stripped: re-emit it so the IDE and later errors work.
        Err(err) => token_stream_with_error(quote!(#func), err),
    }
}

fn token_stream_with_error(mut tokens: TokenStream, error: syn::Error) -> TokenStream {
    tokens.extend(error.into_compile_error());
    tokens
}

pub(crate) fn expand(
    kind: AttrKind,
    attr: TokenStream,
    func: &mut ItemFn,
) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let mut route = RouteArgs::default();
    args::parse_into(kind, Span::call_site(), attr, &mut route, &mut errors);

    // Take the other route attributes off the function, in source order.
    let mut first_publisher_span = (kind == AttrKind::Publisher).then(Span::call_site);
    let mut keep = Vec::new();
    let mut consumed = Vec::new();
    for attr in func.attrs.drain(..) {
        let other = match attr.path().segments.last().map(|s| s.ident.to_string()) {
            Some(name) if name == "subscriber" => AttrKind::Subscriber,
            Some(name) if name == "publisher" => AttrKind::Publisher,
            _ => {
                keep.push(attr);
                continue;
            }
        };
        consumed.push(attr.path().clone());
        if other == AttrKind::Publisher && first_publisher_span.is_none() {
            first_publisher_span = Some(attr.span());
        }
        let tokens = match &attr.meta {
            syn::Meta::List(list) => list.tokens.clone(),
            _ => TokenStream::new(),
        };
        args::parse_into(other, attr.span(), tokens, &mut route, &mut errors);
    }
    func.attrs = keep;

    let sig = &mut func.sig;
    if sig.asyncness.is_none() {
        errors.error(sig.fn_token.span, "a handler must be an `async fn`");
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.error(
            sig.generics.span(),
            "a handler cannot be generic: each route needs one concrete signature",
        );
    }
    if let Some(v) = &sig.variadic {
        errors.error(v.span(), "a handler cannot be variadic");
    }
    let arguments = signature::classify_args(&mut sig.inputs, &mut errors);
    if route.subscribers.is_empty() {
        errors.error(
            first_publisher_span.unwrap_or_else(Span::call_site),
            "#[publisher] needs a #[subscriber] on the same function: it publishes what that handler returns",
        );
    }
    let batch = route.batch.on.is_some_and(|(_, on)| on);
    let shape = match batch {
        true => signature::batch_return_shape(&sig.output),
        false => signature::return_shape(&sig.output),
    };
    if !route.publishers.is_empty() && !shape.publishes() {
        let span = match &sig.output {
            syn::ReturnType::Default => sig.ident.span(),
            syn::ReturnType::Type(_, ty) => ty.span(),
        };
        errors.error(
            span,
            "this handler has a #[publisher] but returns nothing to publish: return the message (String, bytes or a Serialize type)",
        );
    }
    let bodies: Vec<_> = arguments
        .iter()
        .filter(|a| matches!(a.kind, ArgKind::Body))
        .collect();
    if bodies.len() > 1 {
        for b in &bodies {
            if b.name.is_none() {
                errors.error(
                    b.span,
                    "with several body arguments each one is a JSON field and needs a plain name (`user: String`)",
                );
            }
        }
    }
    if batch {
        check_batch(&route, &sig.ident, &arguments, &mut errors);
    } else {
        for lit in [&route.batch.max_records, &route.batch.timeout_ms]
            .into_iter()
            .flatten()
        {
            errors.error(
                lit.span(),
                "this option sets up batches: it needs `batch = true` on the handler",
            );
        }
    }
    check_retry_topics(&route, &mut errors);
    check_exactly_once(&route, &mut errors);
    errors.finish()?;

    Ok(generate(func, &route, &arguments, &shape, &consumed))
}

/// Retry topics keep per-key order through lanes of one topic's partitions in one group: the
/// handler subscribes to one topic by name, in a consumer group.
fn check_retry_topics(route: &RouteArgs, errors: &mut Errors) {
    if !route.policy.iter().any(|(k, _)| k == "retry_topics") {
        return;
    }
    let topics: Vec<&LitStr> = route.subscribers.iter().flat_map(|s| &s.topics).collect();
    let problem = if route.subscribers.iter().any(|s| s.dynamic) {
        Some("`retry_topics` needs a subscription to one topic by name, not a `dynamic` one")
    } else if route.subscribers.iter().any(|s| s.pattern.is_some()) {
        Some("`retry_topics` needs a subscription to one topic by name, not a pattern")
    } else if route.subscribers.len() > 1 || topics.len() > 1 {
        Some("`retry_topics` needs a subscription to one topic: a message's retries stay on the partition of the same number of its topic")
    } else if route.subscribers.iter().any(|s| s.group_id.is_none()) {
        Some("`retry_topics` needs a consumer group (`group_id = \"...\"`): the group commits the retry topics' progress")
    } else {
        None
    };
    if let Some(problem) = problem {
        let span = topics.first().map_or_else(Span::call_site, |t| t.span());
        errors.error(span, problem);
    }
}

/// Exactly-once commits the offsets in the producer's transaction through the group
/// coordinator: every subscription is in a group, and the offset moves only with the outputs.
fn check_exactly_once(route: &RouteArgs, errors: &mut Errors) {
    let on = |k: &str| {
        route
            .policy
            .iter()
            .any(|(key, tokens)| key == k && tokens.to_string() == "true")
    };
    if !on("exactly_once") {
        return;
    }
    let ack = route
        .policy
        .iter()
        .find(|(k, _)| k == "ack")
        .map(|(_, t)| t.to_string());
    let problem = if route.subscribers.iter().any(|s| s.group_id.is_none()) {
        Some("`exactly_once` needs a consumer group (`group_id = \"...\"`): the offsets are committed in the transaction through the group")
    } else if ack
        .as_deref()
        .is_some_and(|a| a.contains("First") || a.contains("Manual"))
    {
        Some("`exactly_once` commits an offset with its message's outputs: `ack = \"first\"` and `ack = \"manual\"` do not apply")
    } else {
        None
    };
    if let Some(problem) = problem {
        let span = route
            .subscribers
            .iter()
            .flat_map(|s| &s.topics)
            .next()
            .map_or_else(Span::call_site, |t| t.span());
        errors.error(span, problem);
    }
}

/// A batch handler takes one `Vec<T>` body and no per-message extractor; it runs one batch at a
/// time per partition and cannot be acknowledged by hand.
fn check_batch(
    route: &RouteArgs,
    ident: &syn::Ident,
    arguments: &[signature::Arg],
    errors: &mut Errors,
) {
    let bodies: Vec<_> = arguments
        .iter()
        .filter(|a| matches!(a.kind, ArgKind::Body))
        .collect();
    match bodies[..] {
        [] => errors.error(
            ident.span(),
            "a batch handler takes its messages as a `Vec<T>` argument (`Vec<Message>` for the messages as received)",
        ),
        [body] if signature::batch_element(&body.ty).is_none() => errors.error(
            body.span,
            "a batch handler takes its messages as one `Vec<T>` argument, each element decoded from one message",
        ),
        [_] => {}
        [_, second, ..] => errors.error(
            second.span,
            "a batch handler takes one body argument, a `Vec<T>`: put the fields in the element type",
        ),
    }
    for arg in arguments {
        let name = match &arg.kind {
            ArgKind::Header(_) => Some("#[header]".to_owned()),
            ArgKind::Context => signature::per_message_extractor(&arg.ty).map(|n| format!("`{n}`")),
            ArgKind::Body => None,
        };
        if let Some(name) = name {
            errors.error(
                arg.span,
                format!(
                    "{name} is one message's, and a batch handler gets many: take `Vec<Message>` to see each message's key, headers and offset"
                ),
            );
        }
    }
    for (key, tokens) in &route.policy {
        let problem = match key.as_str() {
            "concurrency" => "`concurrency` does not apply to batch handlers: each partition hands over one batch at a time",
            "ack" if tokens.to_string().contains("Manual") => {
                "`ack = \"manual\"` is not supported for batch handlers: a batch is acknowledged once handled (or use ack = \"first\")"
            }
            "no_reply" => "`no_reply` does not apply to batch handlers: they never answer `reply_to`",
            _ => continue,
        };
        let span = route
            .batch
            .on
            .map_or_else(Span::call_site, |(span, _)| span);
        errors.error(span, problem);
    }
}

fn generate(
    func: &ItemFn,
    route: &RouteArgs,
    arguments: &[signature::Arg],
    shape: &Shape,
    consumed: &[syn::Path],
) -> TokenStream {
    let krate = route
        .krate
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(::faststream));
    let ident = &func.sig.ident;
    let vis = &func.vis;
    let static_ident = format_ident!("__faststream_route_{}", ident);
    let fs = quote!(#krate::__private);

    // Decode each argument, in order.
    let mut decls = Vec::new();
    let mut call_args = Vec::new();
    let mut states = Vec::new();
    let bodies: Vec<_> = arguments
        .iter()
        .filter(|a| matches!(a.kind, ArgKind::Body))
        .collect();
    let mut body_struct = TokenStream::new();
    if bodies.len() > 1 {
        let names: Vec<_> = bodies.iter().map(|b| b.name.clone().unwrap()).collect();
        let tys: Vec<_> = bodies.iter().map(|b| &b.ty).collect();
        let list = names
            .iter()
            .map(|n| format!("`{}`", n.unraw()))
            .collect::<Vec<_>>()
            .join(", ");
        let what = LitStr::new(
            &format!("a JSON object with fields {list}"),
            Span::call_site(),
        );
        let serde_path = LitStr::new(
            &format!("{}::serde", quote!(#fs)).replace(' ', ""),
            Span::call_site(),
        );
        body_struct = quote! {
            #[derive(#fs::serde::Deserialize)]
            #[serde(crate = #serde_path)]
            #[allow(non_camel_case_types)]
            struct __Body { #(#names: #tys,)* }
        };
        decls.push(quote! {
            let __Body { #(#names,)* } = #fs::decode_json::<__Body>(&__msg, #what)?;
        });
    }
    let batch = route.batch.on.is_some_and(|(_, on)| on);
    let mut batch_body = None;
    for (i, arg) in arguments.iter().enumerate() {
        let var = format_ident!("__arg{}", i);
        let ty = &arg.ty;
        let span = arg.span;
        if let (true, ArgKind::Body, Some(elem)) = (batch, &arg.kind, signature::batch_element(ty))
        {
            let what = LitStr::new(&quote!(#elem).to_string(), span);
            let decode = if signature::is_message(elem) {
                quote!(::core::result::Result::Ok(::core::clone::Clone::clone(
                    __msg
                )))
            } else {
                match signature::body_codec(elem) {
                    BodyCodec::Text => quote!(#fs::decode_text(__msg)),
                    BodyCodec::Raw => {
                        quote!(#fs::decode_raw(__msg).map(::std::convert::From::from))
                    }
                    BodyCodec::Json => quote!({
                        #[allow(unused_imports)]
                        use #fs::{DecodeExact as _, DecodeJson as _};
                        (&&#fs::BodyProbe::<#elem>::new()).decode(__msg, #what)
                    }),
                }
            };
            batch_body = Some(quote_spanned! {span=>
                let (#var, __undecodable) = #fs::decode_batch(
                    &__msgs,
                    |__msg: &#fs::Message| -> ::core::result::Result<#elem, #fs::HandlerError> { #decode },
                );
                if #var.is_empty() {
                    return #fs::BatchResult {
                        undecodable: __undecodable,
                        replies: ::core::result::Result::Ok(::std::vec::Vec::new()),
                    };
                }
            });
            call_args.push(quote!(#var));
            continue;
        }
        match &arg.kind {
            ArgKind::Context => {
                if let Some(inner) = signature::state_inner(ty) {
                    states.push(quote_spanned!(span=> #fs::StateReq::of::<#inner>));
                }
                decls.push(quote_spanned! {span=>
                    let #var = <#ty as #fs::FromMessage>::from_message(&__msg, &__ctx)?;
                });
                call_args.push(quote!(#var));
            }
            ArgKind::Header(name) => {
                decls.push(quote_spanned! {span=>
                    let #var = <#ty as #fs::FromHeader>::from_header(&__msg, #name)?;
                });
                call_args.push(quote!(#var));
            }
            ArgKind::Body if bodies.len() > 1 => {
                let name = arg.name.clone().unwrap();
                call_args.push(quote!(#name));
            }
            ArgKind::Body => {
                let what = LitStr::new(&quote!(#ty).to_string(), span);
                decls.push(match signature::body_codec(ty) {
                    BodyCodec::Text => quote_spanned! {span=>
                        let #var: #ty = #fs::decode_text(&__msg)?;
                    },
                    BodyCodec::Raw => quote_spanned! {span=>
                        let #var: #ty = ::std::convert::From::from(#fs::decode_raw(&__msg)?);
                    },
                    // By the type, not its spelling: an alias of `String` is still text.
                    BodyCodec::Json => quote_spanned! {span=>
                        let #var: #ty = {
                            #[allow(unused_imports)]
                            use #fs::{DecodeExact as _, DecodeJson as _};
                            (&&#fs::BodyProbe::<#ty>::new()).decode(&__msg, #what)?
                        };
                    },
                });
                call_args.push(quote!(#var));
            }
        }
    }

    let handler = match batch_body {
        Some(body) => {
            let encode = encode_batch(shape, quote!(__ret), &fs);
            let max = route
                .batch
                .max_records
                .as_ref()
                .map_or(quote!(500), |l| quote!(#l));
            let ms = route
                .batch
                .timeout_ms
                .as_ref()
                .map_or(quote!(200), |l| quote!(#l));
            quote! {
                fn __handler(
                    __msgs: ::std::vec::Vec<#fs::Message>,
                    __ctx: #fs::Context,
                ) -> #fs::BoxFuture<'static, #fs::BatchResult> {
                    ::std::boxed::Box::pin(async move {
                        #body
                        let __replies = async move {
                            // Extractors other than the body see the batch's first message.
                            let __msg = &__msgs[0];
                            #(#decls)*
                            let __ret = #ident(#(#call_args),*).await;
                            #encode
                        }
                        .await;
                        #fs::BatchResult { undecodable: __undecodable, replies: __replies }
                    })
                }
                #fs::RouteHandler::Batch(__handler, #fs::BatchDef::new(#max, #ms))
            }
        }
        None => {
            let encode = encode(shape, quote!(__ret), &fs);
            quote! {
                fn __handler(
                    __msg: #fs::Message,
                    __ctx: #fs::Context,
                ) -> #fs::BoxFuture<'static, #fs::HandlerResult> {
                    ::std::boxed::Box::pin(async move {
                        #(#decls)*
                        let __ret = #ident(#(#call_args),*).await;
                        #encode
                    })
                }
                #fs::RouteHandler::One(__handler)
            }
        }
    };
    let middlewares = route.middlewares.as_ref().map(|paths| {
        let refs = paths
            .iter()
            .map(|p| quote_spanned!(p.span()=> &#p as &'static dyn #fs::Middleware));
        quote!(.__with_middlewares(&[#(#refs),*]))
    });
    let body_payload = body_payload(arguments, batch, &fs);
    let reply_payload = shape_payload(shape, &fs);
    let subscribers = route.subscribers.iter().map(|s| {
        let topics = &s.topics;
        let mut def = quote!(#fs::SubscriberDef::new(&[#(#topics),*]));
        if let Some(p) = &s.pattern {
            def = quote!(#def.pattern(#p));
        }
        if s.dynamic {
            def = quote!(#def.dynamic());
        }
        if let Some(g) = &s.group_id {
            def = quote!(#def.group_id(#g));
        }
        if let Some(r) = s.auto_offset_reset {
            let r = match r {
                OffsetReset::Earliest => quote!(Earliest),
                OffsetReset::Latest => quote!(Latest),
            };
            def = quote!(#def.auto_offset_reset(#fs::OffsetReset::#r));
        }
        if let Some(parts) = &s.partitions {
            def = quote!(#def.partitions(&[#(#parts),*]));
        }
        if let Some(a) = &s.assignor {
            let a = match a.value().as_str() {
                "range" => quote!(Range),
                "uniform" => quote!(Uniform),
                "cooperative-sticky" => quote!(CooperativeSticky),
                _ => quote!(RoundRobin),
            };
            def = quote!(#def.assignor(#fs::Assignor::#a));
        }
        if let Some(p) = &s.group_protocol {
            let p = match p.value().as_str() {
                "consumer" => quote!(Consumer),
                _ => quote!(Classic),
            };
            def = quote!(#def.group_protocol(#fs::GroupProtocol::#p));
        }
        for (name, ms) in &s.durations {
            let method = format_ident!("{}", name);
            def = quote!(#def.#method(#ms));
        }
        def
    });
    let publishers = &route.publishers;
    let topic_checks = route.topic_names.iter().map(|lit| topic_check(lit, &fs));
    let line = quote_spanned!(ident.span()=> ::core::line!());
    let mut policy = quote!(#fs::PolicyDef::new());
    for (name, value) in &route.policy {
        let method = format_ident!("{}", name);
        let value = replace_fs(value.clone(), &fs);
        policy = quote!(#policy.#method(#value));
    }

    quote! {
        #func

        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        #vis static #static_ident: #fs::RouteDef = {
            // The stacked attributes were expanded here; keep their imports used.
            #(#[allow(unused_imports)] use #consumed as _;)*
            #(#topic_checks)*
            #body_struct

            #fs::RouteDef::__new(
                ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident)),
                ::core::file!(),
                #line,
                &[#(#subscribers),*],
                &[#(#publishers),*],
                &[#(#states),*],
                #policy,
                { #handler },
            )
            #middlewares
            .__with_schemas({
                fn __schemas(__g: &mut #fs::SchemaGen) -> #fs::RouteSchemas {
                    #fs::RouteSchemas { body: #body_payload, reply: #reply_payload }
                }
                __schemas
            })
        };

        #fs::inventory::submit! {
            #fs::RouteRef(&#static_ident)
        }
    }
}

/// A compile-time check of a written topic name against Kafka's rule (the core's
/// `TopicNameProblem::of`): an invalid name fails the build with a message naming it, at the
/// name.
fn topic_check(lit: &LitStr, fs: &TokenStream) -> TokenStream {
    let name = lit.value();
    let say = |what: String| LitStr::new(&what, lit.span());
    let empty = say("topic name must not be empty".to_owned());
    let long = say(format!(
        "topic name \"{name}\" is {} characters long; Kafka allows at most 249",
        name.len()
    ));
    let dots = say(format!("`{name}` is not a valid topic name"));
    let chars = say(format!(
        "invalid character in topic name \"{name}\": Kafka allows only ASCII letters, digits, '.', '_' and '-'"
    ));
    quote_spanned! {lit.span()=>
        const _: () = match #fs::TopicNameProblem::of(#lit) {
            ::core::option::Option::None => {}
            ::core::option::Option::Some(#fs::TopicNameProblem::Empty) => ::core::panic!("{}", #empty),
            ::core::option::Option::Some(#fs::TopicNameProblem::TooLong { .. }) => ::core::panic!("{}", #long),
            ::core::option::Option::Some(#fs::TopicNameProblem::Dots) => ::core::panic!("{}", #dots),
            ::core::option::Option::Some(_) => ::core::panic!("{}", #chars),
        };
    }
}

/// The `Option<Payload>` expression describing what the handler reads from the body.
fn body_payload(arguments: &[signature::Arg], batch: bool, fs: &TokenStream) -> TokenStream {
    let bodies: Vec<_> = arguments
        .iter()
        .filter(|a| matches!(a.kind, ArgKind::Body))
        .collect();
    let one = |ty: &syn::Type| match signature::body_codec(ty) {
        BodyCodec::Text => {
            quote!(::core::option::Option::Some(#fs::Payload::text(::core::any::type_name::<#ty>())))
        }
        BodyCodec::Raw => {
            quote!(::core::option::Option::Some(#fs::Payload::bytes(::core::any::type_name::<#ty>())))
        }
        // Decided by the type, as the decoding is: an alias of `String` is read as text.
        BodyCodec::Json => quote!({
            #[allow(unused_imports)]
            use #fs::{DecodeExact as _, DecodeJson as _};
            #fs::Payload::reply(
                (&&#fs::BodyProbe::<#ty>::new()).kind(),
                ::core::any::type_name::<#ty>(),
                #fs::schema_of!(__g, #ty),
            )
        }),
    };
    match &bodies[..] {
        [] => quote!(::core::option::Option::None),
        [body] if batch => match signature::batch_element(&body.ty) {
            Some(elem) if !signature::is_message(elem) => one(elem),
            _ => quote!(::core::option::Option::None),
        },
        [body] => one(&body.ty),
        several => {
            let fields = several.iter().map(|b| {
                let name = b
                    .name
                    .as_ref()
                    .map(|n| n.unraw().to_string())
                    .unwrap_or_default();
                let ty = &b.ty;
                let required = !signature::is_option(ty);
                quote!((#name, #required, #fs::schema_of!(__g, #ty)))
            });
            let names = several
                .iter()
                .filter_map(|b| b.name.as_ref().map(|n| n.unraw().to_string()))
                .collect::<Vec<_>>()
                .join(", ");
            let what = LitStr::new(&format!("{{{names}}}"), Span::call_site());
            quote!(::core::option::Option::Some(#fs::Payload::json(
                #what,
                #fs::object_schema(&[#(#fields),*]),
            )))
        }
    }
}

/// The `Option<Payload>` expression describing what a return value of this shape publishes.
fn shape_payload(shape: &Shape, fs: &TokenStream) -> TokenStream {
    match shape {
        Shape::Unit => quote!(::core::option::Option::None),
        Shape::Text => quote!(::core::option::Option::Some(#fs::Payload::text("String"))),
        Shape::Raw => quote!(::core::option::Option::Some(#fs::Payload::bytes("bytes"))),
        // Decided by the type, as the encoding is: an alias of `String` publishes text.
        Shape::Json(ty) => quote!({
            #[allow(unused_imports)]
            use #fs::{EncodeExact as _, EncodeJson as _, EncodeOption as _, EncodeResult as _};
            #fs::Payload::reply(
                (&&&#fs::ReplyProbe::<#ty>::new()).kind(),
                ::core::any::type_name::<#ty>(),
                #fs::schema_of!(__g, #ty),
            )
        }),
        Shape::Option(inner)
        | Shape::Result(inner)
        | Shape::Response(inner)
        | Shape::List(inner) => shape_payload(inner, fs),
    }
}

/// Replaces the `__fs` placeholder in option tokens by the runtime's private path.
fn replace_fs(tokens: TokenStream, fs: &TokenStream) -> TokenStream {
    tokens
        .into_iter()
        .flat_map(|tt| match tt {
            proc_macro2::TokenTree::Ident(i) if i == "__fs" => fs.clone(),
            proc_macro2::TokenTree::Group(g) => {
                let mut group = proc_macro2::Group::new(g.delimiter(), replace_fs(g.stream(), fs));
                group.set_span(g.span());
                quote!(#group)
            }
            other => quote!(#other),
        })
        .collect()
}

/// The expression turning the handler's return value into `Result<Reply, HandlerError>`.
fn encode(shape: &Shape, value: TokenStream, fs: &TokenStream) -> TokenStream {
    match shape {
        Shape::Unit => quote!({ let _ = #value; ::core::result::Result::Ok(#fs::Reply::none()) }),
        Shape::Text => quote!(::core::result::Result::Ok(#fs::Reply::text(#value))),
        Shape::Raw => quote!(::core::result::Result::Ok(#fs::Reply::bytes(#value))),
        // By the type, not its spelling: an alias of `Result` still fails on `Err`.
        Shape::Json(ty) => quote_spanned! {ty.span()=> {
            #[allow(unused_imports)]
            use #fs::{EncodeExact as _, EncodeJson as _, EncodeOption as _, EncodeResult as _};
            // The value takes the type's span, so a missing `Serialize` points at the type.
            let __leaf = #value;
            (&&&#fs::ReplyProbe::<#ty>::new()).encode(__leaf)
        }},
        Shape::Option(inner) => {
            let inner = encode(inner, quote!(__v), fs);
            quote! {
                match #value {
                    ::core::option::Option::Some(__v) => #inner,
                    ::core::option::Option::None => ::core::result::Result::Ok(#fs::Reply::none()),
                }
            }
        }
        Shape::Result(inner) => {
            let inner = encode(inner, quote!(__v), fs);
            quote! {
                match #value {
                    ::core::result::Result::Ok(__v) => #inner,
                    ::core::result::Result::Err(__e) => ::core::result::Result::Err(#fs::HandlerError::from_handler(__e)),
                }
            }
        }
        // Only batch handlers return lists, and `encode_batch` takes them apart.
        Shape::List(_) => unreachable!("a list is encoded by encode_batch"),
        Shape::Response(inner) => {
            let inner = encode(inner, quote!(__v), fs);
            quote! {{
                let (__v, __meta) = #value.into_parts();
                (#inner).map(|__r| __r.with_meta(__meta))
            }}
        }
    }
}

/// The expression turning a batch handler's return value into
/// `Result<Vec<Reply>, HandlerError>`: a list gives one reply per element, anything else one.
fn encode_batch(shape: &Shape, value: TokenStream, fs: &TokenStream) -> TokenStream {
    match shape {
        Shape::Unit => {
            quote!({ let _ = #value; ::core::result::Result::Ok(::std::vec::Vec::new()) })
        }
        Shape::List(inner) => {
            let inner = encode(inner, quote!(__v), fs);
            quote! {
                ::core::iter::Iterator::collect::<::core::result::Result<::std::vec::Vec<#fs::Reply>, #fs::HandlerError>>(
                    ::core::iter::Iterator::map(::core::iter::IntoIterator::into_iter(#value), |__v| #inner),
                )
            }
        }
        Shape::Option(inner) => {
            let inner = encode_batch(inner, quote!(__v), fs);
            quote! {
                match #value {
                    ::core::option::Option::Some(__v) => #inner,
                    ::core::option::Option::None => ::core::result::Result::Ok(::std::vec::Vec::new()),
                }
            }
        }
        Shape::Result(inner) => {
            let inner = encode_batch(inner, quote!(__v), fs);
            quote! {
                match #value {
                    ::core::result::Result::Ok(__v) => #inner,
                    ::core::result::Result::Err(__e) => ::core::result::Result::Err(#fs::HandlerError::from_handler(__e)),
                }
            }
        }
        single => {
            let single = encode(single, value, fs);
            quote!((#single).map(|__r| ::std::vec![__r]))
        }
    }
}

/// `routes![a, m::b]` -> `vec![&a's descriptor, &m::b's descriptor]`.
pub(crate) fn routes(input: TokenStream) -> TokenStream {
    let parser = syn::punctuated::Punctuated::<syn::Path, syn::Token![,]>::parse_terminated;
    let paths = match syn::parse::Parser::parse2(parser, input) {
        Ok(p) => p,
        Err(e) => return e.into_compile_error(),
    };
    let refs = paths.into_iter().map(|mut p| {
        let last = p.segments.last_mut().expect("a path has a segment");
        last.ident = format_ident!(
            "__faststream_route_{}",
            last.ident,
            span = last.ident.span()
        );
        quote!(&#p)
    });
    // No path to the runtime crate here, so `routes!` works wherever the crate was renamed or
    // re-exported; the element type is inferred where the list is used.
    quote!(::std::vec![#(#refs),*])
}

#[cfg(test)]
mod tests {
    //! Expansion snapshots: `tests/expand/NAME.rs` holds an annotated function,
    //! `NAME.expanded.rs` its pretty-printed expansion. `FASTSTREAM_BLESS=1` rewrites them.
    use super::*;
    use std::path::Path;

    fn expand_file(src: &str) -> String {
        let mut func: ItemFn = syn::parse_str(src).expect("snapshot input parses");
        let attr = func.attrs.remove(0);
        let kind = if attr.path().is_ident("subscriber") {
            AttrKind::Subscriber
        } else {
            AttrKind::Publisher
        };
        let tokens = match &attr.meta {
            syn::Meta::List(l) => l.tokens.clone(),
            _ => TokenStream::new(),
        };
        let out = expand(kind, tokens, &mut func).expect("snapshot input expands");
        prettyplease::unparse(&syn::parse2(out).expect("expansion is a file"))
    }

    #[test]
    fn expansion_snapshots() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/expand");
        let bless = std::env::var_os("FASTSTREAM_BLESS").is_some();
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if !name.ends_with(".rs") || name.ends_with(".expanded.rs") {
                continue;
            }
            let got = expand_file(&std::fs::read_to_string(&path).unwrap());
            let snap = path.with_extension("expanded.rs");
            if bless {
                std::fs::write(&snap, &got).unwrap();
            } else {
                let want = std::fs::read_to_string(&snap)
                    .unwrap_or_else(|_| panic!("missing snapshot {}", snap.display()));
                assert_eq!(
                    got, want,
                    "expansion of {name} changed; rerun with FASTSTREAM_BLESS=1 if intended"
                );
            }
            checked += 1;
        }
        assert!(
            checked >= 4,
            "expected at least four expansion snapshots, found {checked}"
        );
    }
}
