# Developer shortcuts; each target is a thin wrapper over an npm script.
.PHONY: install dev start test test-pg bench migrate generate docker-build docker-up docker-down ci

install:
	npm ci

dev:
	npm run dev

start:
	npm start

test:
	npm test

# The suite against a local PostgreSQL as well as the embedded one.
test-pg:
	TEST_DATABASE_URL=$${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres} npm test

bench:
	npm run bench

migrate:
	npm run migrate

generate:
	npm run generate

docker-build:
	docker build -f docker/Dockerfile -t vesta:dev .

docker-up:
	docker compose -f docker/docker-compose.yml up --build -d

docker-down:
	docker compose -f docker/docker-compose.yml down

ci:
	bash .ci/run
