//! Attribute macros of [faststream](https://docs.rs/faststream): `#[subscriber]`, `#[publisher]`
//! and `routes!`.
//!
//! Depend on the `faststream` facade rather than on this crate: the generated code refers to
//! `::faststream::__private` (renamable with `crate = "..."`).

use proc_macro::TokenStream;

mod args;
mod expand;
mod signature;

/// Turns an `async fn` into a route that consumes the given topic(s).
///
/// See the `faststream` crate documentation for the argument and return rules.
#[proc_macro_attribute]
pub fn subscriber(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::entry(args::AttrKind::Subscriber, attr.into(), item.into()).into()
}

/// Publishes the return value of a `#[subscriber]` handler to a topic.
///
/// Stack several to fan out. Must be used together with `#[subscriber]` on the same function,
/// in any order.
#[proc_macro_attribute]
pub fn publisher(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::entry(args::AttrKind::Publisher, attr.into(), item.into()).into()
}

/// Lists routes explicitly by handler path: `routes![handle_msg, orders::on_order]`.
///
/// Evaluates to a `Vec<&'static RouteDef>`, for tests and for platforms where link-time
/// collection of routes does not run.
#[proc_macro]
pub fn routes(input: TokenStream) -> TokenStream {
    expand::routes(input.into()).into()
}
