async fn on_order(order: Order) -> Result<(), BillingError> {
    bill(order).await
}
#[doc(hidden)]
#[allow(non_upper_case_globals)]
static __faststream_route_on_order: ::faststream::__private::RouteDef = {
    const _: () = match ::faststream::__private::TopicNameProblem::of("orders") {
        ::core::option::Option::None => {}
        ::core::option::Option::Some(
            ::faststream::__private::TopicNameProblem::Empty,
        ) => ::core::panic!("{}", "topic name must not be empty"),
        ::core::option::Option::Some(
            ::faststream::__private::TopicNameProblem::TooLong { .. },
        ) => {
            ::core::panic!(
                "{}",
                "topic name \"orders\" is 6 characters long; Kafka allows at most 249"
            )
        }
        ::core::option::Option::Some(::faststream::__private::TopicNameProblem::Dots) => {
            ::core::panic!("{}", "`orders` is not a valid topic name")
        }
        ::core::option::Option::Some(_) => {
            ::core::panic!(
                "{}",
                "invalid character in topic name \"orders\": Kafka allows only ASCII letters, digits, '.', '_' and '-'"
            )
        }
    };
    ::faststream::__private::RouteDef::__new(
            ::core::concat!(::core::module_path!(), "::", ::core::stringify!(on_order)),
            ::core::file!(),
            ::core::line!(),
            &[
                ::faststream::__private::SubscriberDef::new(&["orders"])
                    .group_id("billing")
                    .auto_offset_reset(::faststream::__private::OffsetReset::Earliest),
            ],
            &[],
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
                        let __arg0: Order = {
                            #[allow(unused_imports)]
                            use ::faststream::__private::{
                                DecodeExact as _, DecodeJson as _,
                            };
                            (&&::faststream::__private::BodyProbe::<Order>::new())
                                .decode(&__msg, "Order")?
                        };
                        let __ret = on_order(__arg0).await;
                        match __ret {
                            ::core::result::Result::Ok(__v) => {
                                let _ = __v;
                                ::core::result::Result::Ok(
                                    ::faststream::__private::Reply::none(),
                                )
                            }
                            ::core::result::Result::Err(__e) => {
                                ::core::result::Result::Err(
                                    ::faststream::__private::HandlerError::from_handler(__e),
                                )
                            }
                        }
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
                    body: {
                        #[allow(unused_imports)]
                        use ::faststream::__private::{DecodeExact as _, DecodeJson as _};
                        ::faststream::__private::Payload::reply(
                            (&&::faststream::__private::BodyProbe::<Order>::new())
                                .kind(),
                            ::core::any::type_name::<Order>(),
                            ::faststream::__private::schema_of!(__g, Order),
                        )
                    },
                    reply: ::core::option::Option::None,
                }
            }
            __schemas
        })
};
::faststream::__private::inventory::submit! {
    ::faststream::__private::RouteRef(& __faststream_route_on_order)
}
