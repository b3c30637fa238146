#[subscriber("events")]
async fn audit(
    key: Key,
    headers: Headers,
    #[header("x-request-id")] request_id: Option<String>,
    state: State<AppState>,
    #[context] tenant: Tenant,
    payload: Vec<u8>,
) -> Option<Response<Audit>> {
    state.record(key, headers, request_id, tenant, payload)
}
