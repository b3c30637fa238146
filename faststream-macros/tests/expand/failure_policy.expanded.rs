async fn pay(payment: Payment, acker: Acker) -> Result<(), Failure> {
    settle(payment, acker).await
}
#[doc(hidden)]
#[allow(non_upper_case_globals)]
static __faststream_route_pay: ::faststream::__private::RouteDef = {
    const _: () = match ::faststream::__private::TopicNameProblem::of("payments") {
        ::core::option::Option::None => {}
        ::core::option::Option::Some(
            ::faststream::__private::TopicNameProblem::Empty,
        ) => ::core::panic!("{}", "topic name must not be empty"),
        ::core::option::Option::Some(
            ::faststream::__private::TopicNameProblem::TooLong { .. },
        ) => {
            ::core::panic!(
                "{}",
                "topic name \"payments\" is 8 characters long; Kafka allows at most 249"
            )
        }
        ::core::option::Option::Some(::faststream::__private::TopicNameProblem::Dots) => {
            ::core::panic!("{}", "`payments` is not a valid topic name")
        }
        ::core::option::Option::Some(_) => {
            ::core::panic!(
                "{}",
                "invalid character in topic name \"payments\": Kafka allows only ASCII letters, digits, '.', '_' and '-'"
            )
        }
    };
    const _: () = match ::faststream::__private::TopicNameProblem::of("payments.dlq") {
        ::core::option::Option::None => {}
        ::core::option::Option::Some(
            ::faststream::__private::TopicNameProblem::Empty,
        ) => ::core::panic!("{}", "topic name must not be empty"),
        ::core::option::Option::Some(
            ::faststream::__private::TopicNameProblem::TooLong { .. },
        ) => {
            ::core::panic!(
                "{}",
                "topic name \"payments.dlq\" is 12 characters long; Kafka allows at most 249"
            )
        }
        ::core::option::Option::Some(::faststream::__private::TopicNameProblem::Dots) => {
            ::core::panic!("{}", "`payments.dlq` is not a valid topic name")
        }
        ::core::option::Option::Some(_) => {
            ::core::panic!(
                "{}",
                "invalid character in topic name \"payments.dlq\": Kafka allows only ASCII letters, digits, '.', '_' and '-'"
            )
        }
    };
    ::faststream::__private::RouteDef::__new(
            ::core::concat!(::core::module_path!(), "::", ::core::stringify!(pay)),
            ::core::file!(),
            ::core::line!(),
            &[
                ::faststream::__private::SubscriberDef::new(&["payments"])
                    .group_id("billing"),
            ],
            &[],
            &[],
            ::faststream::__private::PolicyDef::new()
                .retry(5)
                .dlq("payments.dlq")
                .ack(::faststream::__private::AckMode::Manual)
                .timeout_ms(2000),
            {
                fn __handler(
                    __msg: ::faststream::__private::Message,
                    __ctx: ::faststream::__private::Context,
                ) -> ::faststream::__private::BoxFuture<
                    'static,
                    ::faststream::__private::HandlerResult,
                > {
                    ::std::boxed::Box::pin(async move {
                        let __arg0: Payment = {
                            #[allow(unused_imports)]
                            use ::faststream::__private::{
                                DecodeExact as _, DecodeJson as _,
                            };
                            (&&::faststream::__private::BodyProbe::<Payment>::new())
                                .decode(&__msg, "Payment")?
                        };
                        let __arg1 = <Acker as ::faststream::__private::FromMessage>::from_message(
                            &__msg,
                            &__ctx,
                        )?;
                        let __ret = pay(__arg0, __arg1).await;
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
                            (&&::faststream::__private::BodyProbe::<Payment>::new())
                                .kind(),
                            ::core::any::type_name::<Payment>(),
                            ::faststream::__private::schema_of!(__g, Payment),
                        )
                    },
                    reply: ::core::option::Option::None,
                }
            }
            __schemas
        })
};
::faststream::__private::inventory::submit! {
    ::faststream::__private::RouteRef(& __faststream_route_pay)
}
