#[publisher("a")]
#[subscriber("in-1", "in-2")]
#[publisher("b")]
pub async fn fan_out(body: String) -> String {
    body.to_uppercase()
}
