async fn average(
    readings: Vec<Reading>,
    db: State<Db>,
) -> Result<Vec<Average>, DbError> {
    db.insert(&readings).await?;
    Ok(summarize(&readings))
}
#[doc(hidden)]
#[allow(non_upper_case_globals)]
static __faststream_route_average: ::faststream::__private::RouteDef = {
    #[allow(unused_imports)]
    use publisher as _;
    const _: () = match ::faststream::__private::TopicNameProblem::of("readings") {
        ::core::option::Option::None => {}
        ::core::option::Option::Some(
            ::faststream::__private::TopicNameProblem::Empty,
        ) => ::core::panic!("{}", "topic name must not be empty"),
        ::core::option::Option::Some(
            ::faststream::__private::TopicNameProblem::TooLong { .. },
        ) => {
            ::core::panic!(
                "{}",
                "topic name \"readings\" is 8 characters long; Kafka allows at most 249"
            )
        }
        ::core::option::Option::Some(::faststream::__private::TopicNameProblem::Dots) => {
            ::core::panic!("{}", "`readings` is not a valid topic name")
        }
        ::core::option::Option::Some(_) => {
            ::core::panic!(
                "{}",
                "invalid character in topic name \"readings\": Kafka allows only ASCII letters, digits, '.', '_' and '-'"
            )
        }
    };
    const _: () = match ::faststream::__private::TopicNameProblem::of("readings-dlq") {
        ::core::option::Option::None => {}
        ::core::option::Option::Some(
            ::faststream::__private::TopicNameProblem::Empty,
        ) => ::core::panic!("{}", "topic name must not be empty"),
        ::core::option::Option::Some(
            ::faststream::__private::TopicNameProblem::TooLong { .. },
        ) => {
            ::core::panic!(
                "{}",
                "topic name \"readings-dlq\" is 12 characters long; Kafka allows at most 249"
            )
        }
        ::core::option::Option::Some(::faststream::__private::TopicNameProblem::Dots) => {
            ::core::panic!("{}", "`readings-dlq` is not a valid topic name")
        }
        ::core::option::Option::Some(_) => {
            ::core::panic!(
                "{}",
                "invalid character in topic name \"readings-dlq\": Kafka allows only ASCII letters, digits, '.', '_' and '-'"
            )
        }
    };
    const _: () = match ::faststream::__private::TopicNameProblem::of("averages") {
        ::core::option::Option::None => {}
        ::core::option::Option::Some(
            ::faststream::__private::TopicNameProblem::Empty,
        ) => ::core::panic!("{}", "topic name must not be empty"),
        ::core::option::Option::Some(
            ::faststream::__private::TopicNameProblem::TooLong { .. },
        ) => {
            ::core::panic!(
                "{}",
                "topic name \"averages\" is 8 characters long; Kafka allows at most 249"
            )
        }
        ::core::option::Option::Some(::faststream::__private::TopicNameProblem::Dots) => {
            ::core::panic!("{}", "`averages` is not a valid topic name")
        }
        ::core::option::Option::Some(_) => {
            ::core::panic!(
                "{}",
                "invalid character in topic name \"averages\": Kafka allows only ASCII letters, digits, '.', '_' and '-'"
            )
        }
    };
    ::faststream::__private::RouteDef::__new(
            ::core::concat!(::core::module_path!(), "::", ::core::stringify!(average)),
            ::core::file!(),
            ::core::line!(),
            &[::faststream::__private::SubscriberDef::new(&["readings"])],
            &["averages"],
            &[::faststream::__private::StateReq::of::<Db>],
            ::faststream::__private::PolicyDef::new().dlq("readings-dlq"),
            {
                fn __handler(
                    __msgs: ::std::vec::Vec<::faststream::__private::Message>,
                    __ctx: ::faststream::__private::Context,
                ) -> ::faststream::__private::BoxFuture<
                    'static,
                    ::faststream::__private::BatchResult,
                > {
                    ::std::boxed::Box::pin(async move {
                        let (__arg0, __undecodable) = ::faststream::__private::decode_batch(
                            &__msgs,
                            |
                                __msg: &::faststream::__private::Message,
                            | -> ::core::result::Result<
                                Reading,
                                ::faststream::__private::HandlerError,
                            > {
                                {
                                    #[allow(unused_imports)]
                                    use ::faststream::__private::{
                                        DecodeExact as _, DecodeJson as _,
                                    };
                                    (&&::faststream::__private::BodyProbe::<Reading>::new())
                                        .decode(__msg, "Reading")
                                }
                            },
                        );
                        if __arg0.is_empty() {
                            return ::faststream::__private::BatchResult {
                                undecodable: __undecodable,
                                replies: ::core::result::Result::Ok(::std::vec::Vec::new()),
                            };
                        }
                        let __replies = async move {
                            let __msg = &__msgs[0];
                            let __arg1 = <State<
                                Db,
                            > as ::faststream::__private::FromMessage>::from_message(
                                &__msg,
                                &__ctx,
                            )?;
                            let __ret = average(__arg0, __arg1).await;
                            match __ret {
                                ::core::result::Result::Ok(__v) => {
                                    ::core::iter::Iterator::collect::<
                                        ::core::result::Result<
                                            ::std::vec::Vec<::faststream::__private::Reply>,
                                            ::faststream::__private::HandlerError,
                                        >,
                                    >(
                                        ::core::iter::Iterator::map(
                                            ::core::iter::IntoIterator::into_iter(__v),
                                            |__v| {
                                                #[allow(unused_imports)]
                                                use ::faststream::__private::{
                                                    EncodeExact as _, EncodeJson as _, EncodeOption as _,
                                                    EncodeResult as _,
                                                };
                                                let __leaf = __v;
                                                (&&&::faststream::__private::ReplyProbe::<Average>::new())
                                                    .encode(__leaf)
                                            },
                                        ),
                                    )
                                }
                                ::core::result::Result::Err(__e) => {
                                    ::core::result::Result::Err(
                                        ::faststream::__private::HandlerError::from_handler(__e),
                                    )
                                }
                            }
                        }
                            .await;
                        ::faststream::__private::BatchResult {
                            undecodable: __undecodable,
                            replies: __replies,
                        }
                    })
                }
                ::faststream::__private::RouteHandler::Batch(
                    __handler,
                    ::faststream::__private::BatchDef::new(100, 50),
                )
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
                            (&&::faststream::__private::BodyProbe::<Reading>::new())
                                .kind(),
                            ::core::any::type_name::<Reading>(),
                            ::faststream::__private::schema_of!(__g, Reading),
                        )
                    },
                    reply: {
                        #[allow(unused_imports)]
                        use ::faststream::__private::{
                            EncodeExact as _, EncodeJson as _, EncodeOption as _,
                            EncodeResult as _,
                        };
                        ::faststream::__private::Payload::reply(
                            (&&&::faststream::__private::ReplyProbe::<Average>::new())
                                .kind(),
                            ::core::any::type_name::<Average>(),
                            ::faststream::__private::schema_of!(__g, Average),
                        )
                    },
                }
            }
            __schemas
        })
};
::faststream::__private::inventory::submit! {
    ::faststream::__private::RouteRef(& __faststream_route_average)
}
