pub async fn fan_out(body: String) -> String {
    body.to_uppercase()
}
#[doc(hidden)]
#[allow(non_upper_case_globals)]
pub static __faststream_route_fan_out: ::faststream::__private::RouteDef = {
    #[allow(unused_imports)]
    use subscriber as _;
    #[allow(unused_imports)]
    use publisher as _;
    ::faststream::__private::RouteDef::__new(
            ::core::concat!(::core::module_path!(), "::", ::core::stringify!(fan_out)),
            ::core::file!(),
            ::core::line!(),
            &[::faststream::__private::SubscriberDef::new(&["in-1", "in-2"])],
            &["a", "b"],
            &[],
            ::faststream::__private::PolicyDef::new(),
            {
                fn __handler(
                    __msg: ::faststream::__private::Message,
                    __ctx: ::faststream::__private::Context,
                ) -> ::faststream::__private::BoxFuture<
                    'static,
                    ::faststream::__private::HandlerResult,
                > {
                    ::std::boxed::Box::pin(async move {
                        let __arg0: String = ::faststream::__private::decode_text(
                            &__msg,
                        )?;
                        let __ret = fan_out(__arg0).await;
                        ::core::result::Result::Ok(
                            ::faststream::__private::Reply::text(__ret),
                        )
                    })
                }
                ::faststream::__private::RouteHandler::One(__handler)
            },
        )
        .__with_schemas({
            fn __schemas(
                __g: &mut ::faststream::__private::SchemaGen,
            ) -> ::faststream::__private::RouteSchemas {
                ::faststream::__private::RouteSchemas {
                    body: ::core::option::Option::Some(
                        ::faststream::__private::Payload::text(
                            ::core::any::type_name::<String>(),
                        ),
                    ),
                    reply: ::core::option::Option::Some(
                        ::faststream::__private::Payload::text("String"),
                    ),
                }
            }
            __schemas
        })
};
::faststream::__private::inventory::submit! {
    ::faststream::__private::RouteRef(& __faststream_route_fan_out)
}
