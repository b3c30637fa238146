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
    const _: () = match ::faststream::__private::TopicNameProblem::of("a") {
        ::core::option::Option::None => {}
        ::core::option::Option::Some(
            ::faststream::__private::TopicNameProblem::Empty,
        ) => ::core::panic!("{}", "topic name must not be empty"),
        ::core::option::Option::Some(
            ::faststream::__private::TopicNameProblem::TooLong { .. },
        ) => {
            ::core::panic!(
                "{}", "topic name \"a\" is 1 characters long; Kafka allows at most 249"
            )
        }
        ::core::option::Option::Some(::faststream::__private::TopicNameProblem::Dots) => {
            ::core::panic!("{}", "`a` is not a valid topic name")
        }
        ::core::option::Option::Some(_) => {
            ::core::panic!(
                "{}",
                "invalid character in topic name \"a\": Kafka allows only ASCII letters, digits, '.', '_' and '-'"
            )
        }
    };
    const _: () = match ::faststream::__private::TopicNameProblem::of("in-1") {
        ::core::option::Option::None => {}
        ::core::option::Option::Some(
            ::faststream::__private::TopicNameProblem::Empty,
        ) => ::core::panic!("{}", "topic name must not be empty"),
        ::core::option::Option::Some(
            ::faststream::__private::TopicNameProblem::TooLong { .. },
        ) => {
            ::core::panic!(
                "{}",
                "topic name \"in-1\" is 4 characters long; Kafka allows at most 249"
            )
        }
        ::core::option::Option::Some(::faststream::__private::TopicNameProblem::Dots) => {
            ::core::panic!("{}", "`in-1` is not a valid topic name")
        }
        ::core::option::Option::Some(_) => {
            ::core::panic!(
                "{}",
                "invalid character in topic name \"in-1\": Kafka allows only ASCII letters, digits, '.', '_' and '-'"
            )
        }
    };
    const _: () = match ::faststream::__private::TopicNameProblem::of("in-2") {
        ::core::option::Option::None => {}
        ::core::option::Option::Some(
            ::faststream::__private::TopicNameProblem::Empty,
        ) => ::core::panic!("{}", "topic name must not be empty"),
        ::core::option::Option::Some(
            ::faststream::__private::TopicNameProblem::TooLong { .. },
        ) => {
            ::core::panic!(
                "{}",
                "topic name \"in-2\" is 4 characters long; Kafka allows at most 249"
            )
        }
        ::core::option::Option::Some(::faststream::__private::TopicNameProblem::Dots) => {
            ::core::panic!("{}", "`in-2` is not a valid topic name")
        }
        ::core::option::Option::Some(_) => {
            ::core::panic!(
                "{}",
                "invalid character in topic name \"in-2\": Kafka allows only ASCII letters, digits, '.', '_' and '-'"
            )
        }
    };
    const _: () = match ::faststream::__private::TopicNameProblem::of("b") {
        ::core::option::Option::None => {}
        ::core::option::Option::Some(
            ::faststream::__private::TopicNameProblem::Empty,
        ) => ::core::panic!("{}", "topic name must not be empty"),
        ::core::option::Option::Some(
            ::faststream::__private::TopicNameProblem::TooLong { .. },
        ) => {
            ::core::panic!(
                "{}", "topic name \"b\" is 1 characters long; Kafka allows at most 249"
            )
        }
        ::core::option::Option::Some(::faststream::__private::TopicNameProblem::Dots) => {
            ::core::panic!("{}", "`b` is not a valid topic name")
        }
        ::core::option::Option::Some(_) => {
            ::core::panic!(
                "{}",
                "invalid character in topic name \"b\": Kafka allows only ASCII letters, digits, '.', '_' and '-'"
            )
        }
    };
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
