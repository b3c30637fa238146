async fn audit(
    key: Key,
    headers: Headers,
    request_id: Option<String>,
    state: State<AppState>,
    tenant: Tenant,
    payload: Vec<u8>,
) -> Option<Response<Audit>> {
    state.record(key, headers, request_id, tenant, payload)
}
#[doc(hidden)]
#[allow(non_upper_case_globals)]
static __faststream_route_audit: ::faststream::__private::RouteDef = {
    const _: () = match ::faststream::__private::TopicNameProblem::of("events") {
        ::core::option::Option::None => {}
        ::core::option::Option::Some(
            ::faststream::__private::TopicNameProblem::Empty,
        ) => ::core::panic!("{}", "topic name must not be empty"),
        ::core::option::Option::Some(
            ::faststream::__private::TopicNameProblem::TooLong { .. },
        ) => {
            ::core::panic!(
                "{}",
                "topic name \"events\" is 6 characters long; Kafka allows at most 249"
            )
        }
        ::core::option::Option::Some(::faststream::__private::TopicNameProblem::Dots) => {
            ::core::panic!("{}", "`events` is not a valid topic name")
        }
        ::core::option::Option::Some(_) => {
            ::core::panic!(
                "{}",
                "invalid character in topic name \"events\": Kafka allows only ASCII letters, digits, '.', '_' and '-'"
            )
        }
    };
    ::faststream::__private::RouteDef::__new(
            ::core::concat!(::core::module_path!(), "::", ::core::stringify!(audit)),
            ::core::file!(),
            ::core::line!(),
            &[::faststream::__private::SubscriberDef::new(&["events"])],
            &[],
            &[::faststream::__private::StateReq::of::<AppState>],
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
                        let __arg0 = <Key as ::faststream::__private::FromMessage>::from_message(
                            &__msg,
                            &__ctx,
                        )?;
                        let __arg1 = <Headers as ::faststream::__private::FromMessage>::from_message(
                            &__msg,
                            &__ctx,
                        )?;
                        let __arg2 = <Option<
                            String,
                        > as ::faststream::__private::FromHeader>::from_header(
                            &__msg,
                            "x-request-id",
                        )?;
                        let __arg3 = <State<
                            AppState,
                        > as ::faststream::__private::FromMessage>::from_message(
                            &__msg,
                            &__ctx,
                        )?;
                        let __arg4 = <Tenant as ::faststream::__private::FromMessage>::from_message(
                            &__msg,
                            &__ctx,
                        )?;
                        let __arg5: Vec<u8> = ::std::convert::From::from(
                            ::faststream::__private::decode_raw(&__msg)?,
                        );
                        let __ret = audit(__arg0, __arg1, __arg2, __arg3, __arg4, __arg5)
                            .await;
                        match __ret {
                            ::core::option::Option::Some(__v) => {
                                let (__v, __meta) = __v.into_parts();
                                ({
                                    #[allow(unused_imports)]
                                    use ::faststream::__private::{
                                        EncodeExact as _, EncodeJson as _, EncodeOption as _,
                                        EncodeResult as _,
                                    };
                                    let __leaf = __v;
                                    (&&&::faststream::__private::ReplyProbe::<Audit>::new())
                                        .encode(__leaf)
                                })
                                    .map(|__r| __r.with_meta(__meta))
                            }
                            ::core::option::Option::None => {
                                ::core::result::Result::Ok(
                                    ::faststream::__private::Reply::none(),
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
                    body: ::core::option::Option::Some(
                        ::faststream::__private::Payload::bytes(
                            ::core::any::type_name::<Vec<u8>>(),
                        ),
                    ),
                    reply: {
                        #[allow(unused_imports)]
                        use ::faststream::__private::{
                            EncodeExact as _, EncodeJson as _, EncodeOption as _,
                            EncodeResult as _,
                        };
                        ::faststream::__private::Payload::reply(
                            (&&&::faststream::__private::ReplyProbe::<Audit>::new())
                                .kind(),
                            ::core::any::type_name::<Audit>(),
                            ::faststream::__private::schema_of!(__g, Audit),
                        )
                    },
                }
            }
            __schemas
        })
};
::faststream::__private::inventory::submit! {
    ::faststream::__private::RouteRef(& __faststream_route_audit)
}
