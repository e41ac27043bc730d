"""The `/api/v1` router: every domain's HTTP endpoints."""

from fastapi import APIRouter

from app.auth.router import router as auth_router
from scheduling.router import router as scheduling_router
from scheduling.visit_router import router as visit_router

api_router = APIRouter(prefix="/api/v1")
api_router.include_router(auth_router)
api_router.include_router(scheduling_router)
api_router.include_router(visit_router)
