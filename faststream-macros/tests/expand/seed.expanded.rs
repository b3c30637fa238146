async fn handle_msg(user: String, user_id: i64) -> String {
    format!("User: {user_id} - {user} registered")
}
#[doc(hidden)]
#[allow(non_upper_case_globals)]
static __faststream_route_handle_msg: ::faststream::__private::RouteDef = {
    #[allow(unused_imports)]
    use publisher as _;
    const _: () = match ::faststream::__private::TopicNameProblem::of("in_topic") {
        ::core::option::Option::None => {}
        ::core::option::Option::Some(
            ::faststream::__private::TopicNameProblem::Empty,
        ) => ::core::panic!("{}", "topic name must not be empty"),
        ::core::option::Option::Some(
            ::faststream::__private::TopicNameProblem::TooLong { .. },
        ) => {
            ::core::panic!(
                "{}",
                "topic name \"in_topic\" is 8 characters long; Kafka allows at most 249"
            )
        }
        ::core::option::Option::Some(::faststream::__private::TopicNameProblem::Dots) => {
            ::core::panic!("{}", "`in_topic` is not a valid topic name")
        }
        ::core::option::Option::Some(_) => {
            ::core::panic!(
                "{}",
                "invalid character in topic name \"in_topic\": Kafka allows only ASCII letters, digits, '.', '_' and '-'"
            )
        }
    };
    const _: () = match ::faststream::__private::TopicNameProblem::of("out-topic") {
        ::core::option::Option::None => {}
        ::core::option::Option::Some(
            ::faststream::__private::TopicNameProblem::Empty,
        ) => ::core::panic!("{}", "topic name must not be empty"),
        ::core::option::Option::Some(
            ::faststream::__private::TopicNameProblem::TooLong { .. },
        ) => {
            ::core::panic!(
                "{}",
                "topic name \"out-topic\" is 9 characters long; Kafka allows at most 249"
            )
        }
        ::core::option::Option::Some(::faststream::__private::TopicNameProblem::Dots) => {
            ::core::panic!("{}", "`out-topic` is not a valid topic name")
        }
        ::core::option::Option::Some(_) => {
            ::core::panic!(
                "{}",
                "invalid character in topic name \"out-topic\": Kafka allows only ASCII letters, digits, '.', '_' and '-'"
            )
        }
    };
    #[derive(::faststream::__private::serde::Deserialize)]
    #[serde(crate = "::faststream::__private::serde")]
    #[allow(non_camel_case_types)]
    struct __Body {
        user: String,
        user_id: i64,
    }
    ::faststream::__private::RouteDef::__new(
            ::core::concat!(
                ::core::module_path!(), "::", ::core::stringify!(handle_msg)
            ),
            ::core::file!(),
            ::core::line!(),
            &[::faststream::__private::SubscriberDef::new(&["in_topic"])],
            &["out-topic"],
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
                        let __Body { user, user_id } = ::faststream::__private::decode_json::<
                            __Body,
                        >(&__msg, "a JSON object with fields `user`, `user_id`")?;
                        let __ret = handle_msg(user, user_id).await;
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
                        ::faststream::__private::Payload::json(
                            "{user, user_id}",
                            ::faststream::__private::object_schema(
                                &[
                                    (
                                        "user",
                                        true,
                                        ::faststream::__private::schema_of!(__g, String),
                                    ),
                                    (
                                        "user_id",
                                        true,
                                        ::faststream::__private::schema_of!(__g, i64),
                                    ),
                                ],
                            ),
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
    ::faststream::__private::RouteRef(& __faststream_route_handle_msg)
}
