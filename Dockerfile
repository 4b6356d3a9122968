# syntax=docker/dockerfile:1
# Build stage: compile TypeScript with the dev dependencies.
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json ./
COPY src ./src
RUN npm ci --no-audit --no-fund --ignore-scripts && npx tsc -b

# Runtime stage: production dependencies and the compiled gateway only, as a non-root user.
FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund --ignore-scripts && npm cache clean --force
COPY --from=build /app/dist ./dist
COPY routes.yaml ./routes.yaml
# Mount your own config over /app/routes.yaml (or point SLUICE_CONFIG elsewhere).
# The CA folder for HTTPS interception must be writable by the gateway's user only; made here so
# that a named volume mounted on it starts with that owner and mode.
RUN mkdir -p /app/.sluice/ca && chown -R node:node /app/.sluice && chmod 700 /app/.sluice/ca
USER node
EXPOSE 8080 9090
# The admin listener must be reachable inside the container for the health check: listen.admin
# defaults to 127.0.0.1:9090, which is where this check looks.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:9090/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
ENTRYPOINT ["node", "dist/cli.js"]
CMD ["start", "--config", "/app/routes.yaml"]
