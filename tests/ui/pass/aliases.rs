//! Aliases and full paths behave like the types they name.
use faststream::{publisher, subscriber};

type Name = String;
type Raw = Vec<u8>;
type Res<T> = Result<T, std::io::Error>;

#[derive(serde::Serialize, serde::Deserialize)]
struct User {
    id: u64,
}

#[subscriber("a")]
#[publisher("a-out")]
async fn text(name: Name) -> Res<Name> {
    Ok(name)
}

#[subscriber("b")]
#[publisher("b-out")]
async fn raw(bytes: Raw) -> Option<Raw> {
    Some(bytes)
}

#[subscriber("c")]
#[publisher("c-out")]
async fn json(user: User) -> Res<User> {
    Ok(user)
}

#[subscriber("d")]
#[publisher("d-out")]
async fn full_path(body: std::string::String) -> ::std::string::String {
    body
}

fn main() {}
